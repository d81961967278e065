//! The stunnel importer on arbitrary host files: the input is the first host's stunnel
//! file, then `%%% NAME` lines starting each further host's file, and `%%% psk` the PSK
//! secrets file. Never a panic. `include` and `PSKsecrets` values are pointed at files in
//! this run's scratch directory, so that an input never reads the machine's own files.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use meshd::config::stunnel::{import, parse_str, HostInput};
use meshd::config::PeerName;

/// Whether a line is an option named `name` as the importer's reader would see it.
fn is_option(line: &str, name: &str) -> bool {
    let line = line.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    line.split_once('=')
        .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
}

/// The text with every `include` and `PSKsecrets` value replaced by a scratch file.
fn confined(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if is_option(line, "include") {
            out.push_str(
                [
                    "include = inc.conf",
                    "include = inc.d",
                    "include = host0.conf",
                ][line.len() % 3],
            );
        } else if is_option(line, "psksecrets") {
            out.push_str(["PSKsecrets = psk.txt", "PSKsecrets = missing.txt"][line.len() % 2]);
        } else {
            out.push_str(line);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let dir = meshd_fuzz::scratch("stunnel");
    std::fs::write(
        dir.join("inc.conf"),
        "[included]\nclient = yes\naccept = 127.0.0.1:7000\nconnect = off2.example.org:7001\n",
    )
    .expect("write");
    std::fs::create_dir(dir.join("inc.d")).expect("mkdir");
    std::fs::write(
        dir.join("inc.d/a.conf"),
        "[dir]\naccept = 7002\nconnect = 127.0.0.1:6379\n",
    )
    .expect("write");
    std::fs::write(dir.join("psk.txt"), "client:0123456789abcdef0123456789\n").expect("write");

    let mut hosts = Vec::new();
    for (i, (name, body)) in meshd_fuzz::split_files(&text, "off1", 5)
        .into_iter()
        .enumerate()
    {
        if name == "psk" {
            std::fs::write(dir.join("psk.txt"), confined(body)).expect("write psk");
            continue;
        }
        let file = dir.join(format!("host{i}.conf"));
        std::fs::write(&file, confined(body)).expect("write host file");
        if i == 0 {
            let _ = parse_str(&file, &confined(body));
        }
        let Ok(name) = PeerName::new(&name) else {
            continue;
        };
        hosts.push(HostInput {
            addrs: vec![format!("{name}.example.org"), "192.0.2.1".to_owned()],
            name,
            file,
        });
    }
    if let Ok(draft) = import(&hosts, "example") {
        let _ = draft.report(Path::new("draft"));
    }
});
