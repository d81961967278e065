//! A join of a stream's two directions that polls each only when its own waker fired.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// `tokio::try_join!` for a stream's two directions, except that each is polled only after
/// its own waker fired: a small message one way then costs no poll of the other way (its
/// socket readiness, its credit, its channel) on each wake-up of the stream's task. It
/// takes the halves pinned by the caller: taken by value, they were held twice in the
/// stream task (the arguments and their pinned copies), 1 KiB more per stream and end.
pub(crate) async fn try_join_woken<E>(
    mut a: Pin<&mut impl Future<Output = Result<(), E>>>,
    mut b: Pin<&mut impl Future<Output = Result<(), E>>>,
) -> Result<(), E> {
    let flags = [Arc::new(HalfWaker::new()), Arc::new(HalfWaker::new())];
    let wakers = [Waker::from(flags[0].clone()), Waker::from(flags[1].clone())];
    let mut done = [false, false];
    std::future::poll_fn(move |cx| {
        for (i, half) in [
            a.as_mut() as Pin<&mut dyn Future<Output = Result<(), E>>>,
            b.as_mut(),
        ]
        .into_iter()
        .enumerate()
        {
            flags[i].set_parent(cx.waker());
            if done[i] || !flags[i].take() {
                continue;
            }
            match half.poll(&mut Context::from_waker(&wakers[i])) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => done[i] = true,
                Poll::Pending => {}
            }
        }
        if done == [true, true] {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// The waker of one half of [`try_join_woken`]: marks that half for polling, then wakes
/// the task.
struct HalfWaker {
    woken: AtomicBool,
    parent: Mutex<Option<Waker>>,
}

impl HalfWaker {
    fn new() -> Self {
        Self {
            // Polled once before anything woke it.
            woken: AtomicBool::new(true),
            parent: Mutex::new(None),
        }
    }

    /// Whether the half was woken since the last call.
    fn take(&self) -> bool {
        self.woken.swap(false, Ordering::AcqRel)
    }

    fn set_parent(&self, waker: &Waker) {
        let mut parent = self.parent.lock().unwrap_or_else(PoisonError::into_inner);
        if !parent.as_ref().is_some_and(|p| p.will_wake(waker)) {
            *parent = Some(waker.clone());
        }
    }
}

impl Wake for HalfWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Marked before the task is woken, so the poll it leads to sees the mark.
        self.woken.store(true, Ordering::Release);
        let parent = self.parent.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(waker) = parent.as_ref() {
            waker.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use tokio::sync::mpsc;

    /// A half that counts its polls and ends after `n` messages, or at the first error sent.
    async fn half(
        polls: &Cell<u32>,
        rx: &mut mpsc::UnboundedReceiver<Result<(), &'static str>>,
        n: usize,
    ) -> Result<(), &'static str> {
        for _ in 0..n {
            let msg = std::future::poll_fn(|cx| {
                polls.set(polls.get() + 1);
                rx.poll_recv(cx)
            })
            .await;
            msg.expect("sender alive")?;
        }
        Ok(())
    }

    /// Each half is polled only when its own waker fired; both must end for the join to
    /// end, and an error from either ends it at once.
    #[tokio::test]
    async fn the_woken_join_polls_only_the_woken_half() {
        let (a_tx, mut a_rx) = mpsc::unbounded_channel();
        let (b_tx, mut b_rx) = mpsc::unbounded_channel();
        let (a_polls, b_polls) = (Cell::new(0), Cell::new(0));
        let a = std::pin::pin!(half(&a_polls, &mut a_rx, 3));
        let b = std::pin::pin!(half(&b_polls, &mut b_rx, 1));
        let join = try_join_woken(a, b);
        let mut join = std::pin::pin!(join);
        // Polls the join once, without waiting.
        macro_rules! poll {
            () => {
                std::future::poll_fn(|cx| Poll::Ready(join.as_mut().poll(cx))).await
            };
        }
        assert!(poll!().is_pending());
        assert_eq!(
            (a_polls.get(), b_polls.get()),
            (1, 1),
            "both polled once at first"
        );
        for i in 0..3 {
            a_tx.send(Ok(())).expect("send");
            assert!(poll!().is_pending(), "b has not ended");
            assert_eq!(b_polls.get(), 1, "message {i} to a polled b");
        }
        b_tx.send(Ok(())).expect("send");
        assert_eq!(poll!(), Poll::Ready(Ok(())));
        // a's channel: pending at first, then each message read and the next one pending,
        // but for the last.
        assert_eq!(a_polls.get(), 6);

        let (a_tx, mut a_rx) = mpsc::unbounded_channel();
        let (_b_tx, mut b_rx) = mpsc::unbounded_channel();
        let (a_polls, b_polls) = (Cell::new(0), Cell::new(0));
        let a = std::pin::pin!(half(&a_polls, &mut a_rx, 5));
        let b = std::pin::pin!(half(&b_polls, &mut b_rx, 5));
        let join = try_join_woken(a, b);
        a_tx.send(Err("cut")).expect("send");
        assert_eq!(
            join.await,
            Err("cut"),
            "an error ends the join though b is pending"
        );
    }
}
