//! A started broadcast, as the handler holds it: [`Started::verdict`]
//! runs the broadcast inside the handler's task until its verdict is
//! ready, and whatever is left then (or when the handler is dropped, the
//! client gone) goes on in a task of its own.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TrackedFuture;
use tracing::{Instrument, Span};

use crate::aggregate::Verdict;

/// A broadcast that is running; its verdict comes through
/// [`Started::verdict`].
///
/// The broadcast runs inside the task that waits for its verdict, up to
/// the verdict. Whatever is left when the waiting stops (the log line and
/// the job's last write, deliveries after an early answer, or everything
/// when the client left and the handler was dropped) goes on in a task of
/// its own, tracked for shutdown like the rest.
pub struct Started {
    /// How many pods it goes to.
    pub targets: usize,
    /// The broadcast's span (its route and id), for the log.
    span: Span,
    verdict: oneshot::Receiver<Verdict>,
    /// The broadcast until it finishes or is handed to a task.
    run: Option<Run>,
    tasks: TaskTracker,
}

/// A broadcast's own future, counted by the shutdown drain while it lives.
type Run = Pin<Box<TrackedFuture<BoxFuture<'static, ()>>>>;

impl Started {
    /// The broadcast `run`, in `span`, to `targets` pods; it sends its
    /// verdict on `verdict` with [`answer`], and is counted by `tasks`
    /// (the shutdown drain) until it is done.
    pub(super) fn new(
        span: Span,
        targets: usize,
        verdict: oneshot::Receiver<Verdict>,
        run: impl Future<Output = ()> + Send + 'static,
        tasks: &TaskTracker,
    ) -> Self {
        let run: BoxFuture<'static, ()> = Box::pin(run.instrument(span.clone()));
        Self {
            span,
            targets,
            verdict,
            run: Some(Box::pin(tasks.track_future(run))),
            tasks: tasks.clone(),
        }
    }

    /// Runs the broadcast until the route's policy (or aggregate plugin)
    /// allows an answer: the verdict, early for a policy that answers
    /// early.
    pub async fn verdict(mut self) -> Verdict {
        std::future::poll_fn(|cx| {
            // Out while it is polled: one that panics is not run again
            // when this is dropped.
            if let Some(mut run) = self.run.take()
                && run.as_mut().poll(cx).is_pending()
            {
                self.run = Some(run);
            }
            // Never polled, so sending it wakes nobody: the broadcast is
            // polled by this task, which looks right after.
            match self.verdict.try_recv() {
                Ok(verdict) => Poll::Ready(verdict),
                Err(oneshot::error::TryRecvError::Empty) if self.run.is_some() => Poll::Pending,
                Err(_) => panic!("a broadcast always sends its verdict"),
            }
        })
        .await
    }

    /// Lets the broadcast run on without anyone waiting for it (an
    /// `async` route).
    pub fn detach(self) {}
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(run) = self.run.take() {
            // Closed first: a verdict sent from now on finds nobody
            // waiting, so the task never waits in a [`HandOver`].
            self.verdict.close();
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    self.tasks.spawn_on(run, &runtime);
                }
                // Only while the process exits: nothing could run it.
                Err(_) => self.span.in_scope(|| {
                    tracing::error!(
                        "No runtime is left to finish the broadcast; its remaining deliveries are abandoned."
                    );
                }),
            }
        }
    }
}

/// Sends a broadcast's verdict to the handler waiting in
/// [`Started::verdict`]; whether it was taken (not: the client left, or
/// the route is `async`). When it was, this returns once the rest of the
/// broadcast runs in a task of its own, after the answer is written.
pub(super) async fn answer(sender: oneshot::Sender<Verdict>, verdict: Verdict) -> bool {
    if sender.send(verdict).is_err() {
        return false;
    }
    // Sent, so the handler polls this broadcast (`Drop` closes the
    // channel before handing it to a task): the hand-over is next.
    HandOver::default().await;
    true
}

/// Pending once, without waking anybody: where a broadcast polled by
/// [`Started::verdict`] stops once its verdict is taken. `verdict` sees
/// the verdict right after and hands the broadcast to a task of its own,
/// whose first poll goes on from here. (`yield_now` would wake the
/// handler's task as well: one more wake-up of another worker per
/// broadcast.)
#[derive(Default)]
struct HandOver {
    polled: bool,
}

impl Future for HandOver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if std::mem::replace(&mut self.polled, true) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use futures_util::FutureExt;

    use super::*;
    use crate::aggregate::Report;
    use crate::vocabulary::policy::Policy;

    fn verdict() -> Verdict {
        Verdict::by_policy(
            Report::new("id", "route", Policy::All, &[], &[]),
            Policy::All,
        )
    }

    #[tokio::test]
    async fn what_is_left_after_the_verdict_runs_in_a_task_of_its_own() {
        let tasks = TaskTracker::new();
        let (sender, receiver) = oneshot::channel();
        let finished = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&finished);
        let run = async move {
            assert!(answer(sender, verdict()).await, "the handler waits");
            done.store(true, Ordering::SeqCst);
        };
        let started = Started::new(Span::none(), 0, receiver, run, &tasks);
        let answered = started.verdict().now_or_never();
        assert!(answered.is_some(), "the verdict comes at the first poll");
        assert!(
            !finished.load(Ordering::SeqCst),
            "the rest comes after the answer"
        );
        tasks.close();
        tasks.wait().await;
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_broadcast_whose_handler_is_dropped_goes_on() {
        let tasks = TaskTracker::new();
        let (sender, receiver) = oneshot::channel::<Verdict>();
        let (open, gate) = oneshot::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&finished);
        let run = async move {
            gate.await.expect("opened");
            // Nobody waits any more: no hand-over, the broadcast goes on.
            assert!(!answer(sender, verdict()).await);
            done.store(true, Ordering::SeqCst);
        };
        let started = Started::new(Span::none(), 0, receiver, run, &tasks);
        assert!(started.verdict().now_or_never().is_none());
        open.send(()).expect("the broadcast waits");
        tasks.close();
        tasks.wait().await;
        assert!(finished.load(Ordering::SeqCst));
    }
}
