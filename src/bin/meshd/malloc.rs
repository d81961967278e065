//! glibc malloc settings for meshd's data path.
//!
//! A link receives into 256 KiB buffers that are handed on as streams' data and freed
//! once written out, so a busy daemon frees and reallocates large blocks all the time.
//! With glibc's defaults each freed block at the top of the heap is given back to the
//! kernel (trim) and the next one is faulted in again, zero-filled: `perf stat -e
//! page-faults` counted 200,000 faults a second on one daemon during one-stream iperf3.
//! Keeping up to `TRIM_THRESHOLD` of free heap and serving blocks below
//! `MMAP_THRESHOLD` from the heap removes that churn.

/// Free memory at the top of the heap kept instead of returned to the kernel.
const TRIM_THRESHOLD: i32 = 16 << 20;
/// Allocations from this size on get their own mapping.
const MMAP_THRESHOLD: i32 = 4 << 20;

/// What `tune` did, for the start-up log.
#[derive(Debug, PartialEq, Eq)]
pub enum Tuning {
    /// The thresholds above are in force.
    Set,
    /// `GLIBC_TUNABLES` sets malloc parameters: the operator's choice is kept.
    LeftToOperator,
    /// glibc refused a parameter; its defaults stay.
    Refused,
    /// Not glibc: nothing to do.
    #[cfg_attr(all(target_os = "linux", target_env = "gnu"), allow(dead_code))]
    NotGlibc,
}

/// True when the operator tunes glibc malloc through `GLIBC_TUNABLES` themselves.
fn operator_tunes(glibc_tunables: Option<&str>) -> bool {
    glibc_tunables.is_some_and(|v| v.contains("glibc.malloc."))
}

/// Sets the thresholds unless the operator set malloc tunables. Call first thing in
/// `main`, before any thread is started.
pub fn tune() -> Tuning {
    let env = std::env::var("GLIBC_TUNABLES").ok();
    if operator_tunes(env.as_deref()) {
        return Tuning::LeftToOperator;
    }
    set_thresholds()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_thresholds() -> Tuning {
    // SAFETY: `mallopt` takes two plain integers and only changes the allocator's
    // parameters under its own lock; it touches no memory of ours. It runs before the
    // runtime starts any thread, and the constants are valid values for both options.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    };
    if ok {
        Tuning::Set
    } else {
        Tuning::Refused
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds() -> Tuning {
    Tuning::NotGlibc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_malloc_tunables_win() {
        assert!(operator_tunes(Some("glibc.malloc.trim_threshold=1")));
        assert!(operator_tunes(Some(
            "glibc.pthread.rseq=0:glibc.malloc.arena_max=2"
        )));
        assert!(!operator_tunes(Some("glibc.pthread.rseq=0")));
        assert!(!operator_tunes(None));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_thresholds() {
        assert_eq!(set_thresholds(), Tuning::Set);
    }
}
