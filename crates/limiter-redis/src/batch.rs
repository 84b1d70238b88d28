//! Checks batched per connection: each connection carries one script call at a time, and the
//! checks that reach it while that call is in flight go together in the next one.
//!
//! A check that finds its connection idle is sent at once, by its own task, so an idle
//! worker pays nothing for batching. One that finds a call in flight joins the connection's
//! queue; when the call ends, a task sends the queue, up to `max_batch` checks per call,
//! until it is empty. Batches form by themselves from the load: there is no timer and no
//! waiting for company, and a busy worker sends fewer, larger calls, so Redis spends its
//! time on buckets instead of on commands.

use std::sync::Arc;
use std::time::Instant;

use limiter_core::{Error, ErrorKind};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::BACKEND;
use crate::connection::Inner;
use crate::script::{Answer, Call, answers};

/// Most checks a connection's queue holds. Callers are bounded by their own deadline; this
/// bounds the memory of a queue whose connection hangs.
const QUEUED: usize = 4096;

type Reply = Result<Answer, Error>;

/// One connection's state.
#[derive(Default)]
pub(crate) struct Lane {
    state: Mutex<LaneState>,
}

#[derive(Default)]
struct LaneState {
    /// A call is in flight, or a task is about to send the queue.
    busy: bool,
    /// Checks waiting for the next call, in arrival order.
    queue: Vec<Job>,
}

/// A check waiting for its batch: its keys and arguments, and where its answer goes.
struct Job {
    call: Call,
    reply: oneshot::Sender<Reply>,
}

/// Runs `call` on the next connection in turn: at once if the connection is idle, else in
/// its next batch.
pub(crate) async fn run(inner: &Arc<Inner>, call: Call) -> Reply {
    let lane = inner.next_connection();
    let turn = {
        let mut state = inner.lanes[lane].state.lock();
        if state.busy {
            if state.queue.len() >= QUEUED {
                state.queue.retain(|job| !job.reply.is_closed());
            }
            if state.queue.len() >= QUEUED {
                return Err(Error::unavailable(
                    BACKEND,
                    format!("{QUEUED} checks are already waiting for one connection"),
                ));
            }
            let (reply, answer) = oneshot::channel();
            state.queue.push(Job { call, reply });
            Turn::Wait(answer)
        } else {
            state.busy = true;
            Turn::Send(call)
        }
    };
    match turn {
        Turn::Send(call) => {
            // Hands the connection on when this call ends, or when its caller gives up.
            let _busy = Busy { inner, lane };
            inner.run_on(lane, &call).await
        }
        // The queue's task ended without answering (its runtime shut down): no decision, so
        // an outage to a fallback, like any other failure to reach Redis.
        Turn::Wait(answer) => answer
            .await
            .map_err(|_| Error::unavailable(BACKEND, "a batch was dropped before it was sent"))?,
    }
}

/// What a check does on arriving at its connection.
enum Turn {
    /// The connection was idle: send the check now.
    Send(Call),
    /// A call is in flight: the check is queued; its answer comes here.
    Wait(oneshot::Receiver<Reply>),
}

/// Marks lane `lane` busy until dropped; then the queue, if any, is sent by a new task.
struct Busy<'a> {
    inner: &'a Arc<Inner>,
    lane: usize,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut state = self.inner.lanes[self.lane].state.lock();
        if state.queue.is_empty() {
            state.busy = false;
            return;
        }
        drop(state);
        let drainer = Drainer {
            inner: Arc::clone(self.inner),
            lane: self.lane,
            finished: false,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(drain(drainer))),
            // Outside a runtime the queue cannot be sent: dropping the drainer answers it.
            Err(_) => drop(drainer),
        }
    }
}

/// Owns lane `lane`'s queue while a task sends it. Dropped before it has finished (the task
/// panicked, or a runtime shutting down dropped it, run or not), it empties the queue, whose
/// callers then get an error at once, and leaves the lane idle: no check waits for a task
/// that will never run.
struct Drainer {
    inner: Arc<Inner>,
    lane: usize,
    /// The queue was found empty and the lane marked idle, under its lock.
    finished: bool,
}

impl Drop for Drainer {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut state = self.inner.lanes[self.lane].state.lock();
        state.queue.clear();
        state.busy = false;
    }
}

/// Sends the drainer's queue, up to `max_batch` checks per call, one call at a time, until
/// it is empty.
async fn drain(mut drainer: Drainer) {
    let lane = drainer.lane;
    let max = drainer.inner.config.max_batch;
    loop {
        let mut jobs: Vec<Job> = {
            let mut state = drainer.inner.lanes[lane].state.lock();
            // A caller that gave up (its deadline passed) is not sent: its tokens stay.
            state.queue.retain(|job| !job.reply.is_closed());
            if state.queue.is_empty() {
                state.busy = false;
                drainer.finished = true;
                return;
            }
            let n = state.queue.len().min(max);
            state.queue.drain(..n).collect()
        };
        send(&drainer.inner, lane, &mut jobs).await;
    }
}

/// Resolves once every caller of `jobs` has given up.
async fn every_caller_gone(jobs: &mut [Job]) {
    for job in jobs {
        job.reply.closed().await;
    }
}

/// Sends `jobs` as one script call on connection `lane` and answers each.
async fn send(inner: &Inner, lane: usize, jobs: &mut Vec<Job>) {
    // Callers first, here and below: once all of them have left, nothing is sent.
    let connected = tokio::select! {
        biased;
        () = every_caller_gone(jobs) => return,
        connected = inner.connection(lane) => connected,
    };
    let (generation, mut conn) = match connected {
        Ok(kept) => kept,
        Err(e) => return fail(jobs, e),
    };
    // Connecting may have taken long enough for some callers to give up: they are not sent.
    jobs.retain(|job| !job.reply.is_closed());
    let mut call = Call::default();
    for job in jobs.iter_mut() {
        call.append(&mut job.call);
    }
    let started = Instant::now();
    let result = tokio::select! {
        biased;
        () = every_caller_gone(jobs) => None,
        result = call.eval(&mut conn, inner.sha()) => Some(result),
    };
    match result {
        // Every caller's deadline passed: a call this slow means a connection stuck behind a
        // partition, whose later calls would hang too (see `StallGuard`).
        None => {
            if started.elapsed() >= inner.stalled_after() {
                inner.forget(lane, generation);
            }
        }
        Some(Ok(reply)) => match answers(&reply, call.sizes()) {
            Ok(answers) => {
                for (job, answer) in jobs.drain(..).zip(answers) {
                    let _ = job.reply.send(Ok(answer)); // a caller that left needs no answer
                }
            }
            Err(e) => fail(jobs, e),
        },
        Some(Err(e)) => fail(jobs, inner.failed(lane, generation, e)),
    }
}

/// Answers every check of a failed call with the same error: the same variant and kind,
/// sharing its source.
fn fail(jobs: &mut Vec<Job>, error: Error) {
    let kind = error.kind();
    let timeout = match &error {
        Error::Timeout { after, .. } => Some(*after),
        _ => None,
    };
    let source: Arc<dyn std::error::Error + Send + Sync> = match error {
        Error::Unavailable { source, .. } | Error::Backend { source, .. } => Arc::from(source),
        other => Arc::new(other),
    };
    for job in jobs.drain(..) {
        let source = Arc::clone(&source);
        let _ = job.reply.send(Err(match (kind, timeout) {
            (_, Some(after)) => Error::Timeout {
                backend: BACKEND,
                after,
            },
            (ErrorKind::Unavailable, _) => Error::unavailable(BACKEND, source),
            (kind, _) => Error::backend(BACKEND, kind, source),
        }));
    }
}
