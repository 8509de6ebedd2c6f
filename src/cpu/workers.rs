//! Kept worker threads for [`super::split`]'s parts.
//!
//! Spawning and joining a thread costs 14 us (median) on the 2-core development VM, and a
//! call over few rows (DeepBench's GRU with T = 1, the one-step call) starts several split
//! loops: the weights' finiteness check, the input projection, the time loop. So the parts
//! beyond the calling thread's go to threads spawned once and kept: each waits on its own
//! mailbox, spinning for [`SPIN`] after a job (the next loop of the same call usually starts
//! within that) and then parked on a condition variable, using no CPU.
//!
//! One caller at a time uses the kept threads (the pool's lock is tried, never waited for):
//! a call that finds them busy (another thread's call, or a loop started from inside a part)
//! spawns scoped threads as before. Either way every part runs on its own thread at the same
//! time as the others, which [`super::split::run_steps`]' barrier needs, and the parts see
//! the same ranges, so results do not depend on which threads ran them.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

/// How long a kept thread (and a caller waiting for them) spins before parking.
pub const SPIN: Duration = Duration::from_micros(100);

/// A part's function with its borrow's lifetime erased: valid until the part is counted done
/// in [`Done::remaining`] (the caller waits for that before its borrow ends).
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync + 'static),
    part: usize,
}

// SAFETY: the function is `Sync`, so calling it from another thread through a shared
// reference is allowed; the pointer outlives its use (see `Job`).
unsafe impl Send for Job {}

/// One kept thread's mailbox.
struct Mailbox {
    /// Whether `slot` holds a job: read while spinning without the lock.
    full: AtomicBool,
    slot: Mutex<Slot>,
    wake: Condvar,
}

#[derive(Default)]
struct Slot {
    job: Option<Job>,
    parked: bool,
}

/// The count of unfinished parts of the current call and the first panic among them.
struct Done {
    remaining: AtomicUsize,
    lock: Mutex<DoneState>,
    wake: Condvar,
}

#[derive(Default)]
struct DoneState {
    caller_parked: bool,
    panic: Option<Box<dyn Any + Send>>,
}

static DONE: Done = Done { remaining: AtomicUsize::new(0), lock: Mutex::new(DoneState { caller_parked: false, panic: None }), wake: Condvar::new() };

/// The kept threads' mailboxes; holding the lock is owning the threads for one call.
static KEPT: Mutex<Vec<&'static Mailbox>> = Mutex::new(Vec::new());

/// Locks ignoring poisoning: every state guarded here stays consistent across a panic (panics
/// in parts are caught before they reach a lock).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f(p)` for every part `p < parts` at the same time, part 0 on the calling thread and
/// the others on kept threads, or on scoped threads when the kept ones are busy or cannot be
/// spawned. A part's panic propagates after every part has finished.
pub fn run_parts<F: Fn(usize) + Sync>(parts: usize, f: F) {
    match parts {
        0 => {}
        1 => f(0),
        _ => {
            let kept = match KEPT.try_lock() {
                Ok(g) => Some(g),
                Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            match kept.and_then(|k| grown(k, parts - 1)) {
                Some(kept) => run_kept(&kept[..parts - 1], &f),
                None => {
                    // As with the kept threads: every part finishes, then the part's own panic
                    // (the caller's first) reaches the caller. Joining each scoped thread keeps
                    // its payload; an unjoined panicked one would end the scope with a panic of
                    // its own ("a scoped thread panicked"), losing it.
                    let (mine, theirs) = std::thread::scope(|s| {
                        let handles: Vec<_> = (1..parts)
                            .map(|p| {
                                let f = &f;
                                s.spawn(move || f(p))
                            })
                            .collect();
                        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
                        let theirs = handles.into_iter().filter_map(|h| h.join().err()).fold(None, |first, p| first.or(Some(p)));
                        (mine, theirs)
                    });
                    if let Err(p) = mine {
                        resume_unwind(p);
                    }
                    if let Some(p) = theirs {
                        resume_unwind(p);
                    }
                }
            }
        }
    }
}

/// The kept threads, at least `n` of them (spawned as needed); `None` when one cannot be.
fn grown(mut kept: MutexGuard<'static, Vec<&'static Mailbox>>, n: usize) -> Option<MutexGuard<'static, Vec<&'static Mailbox>>> {
    while kept.len() < n {
        let mb: &'static Mailbox = Box::leak(Box::new(Mailbox { full: AtomicBool::new(false), slot: Mutex::new(Slot::default()), wake: Condvar::new() }));
        let name = format!("wgpu-rnn-cpu-{}", kept.len() + 1);
        // A thread that cannot be spawned leaves a mailbox no one reads (a few bytes, once).
        std::thread::Builder::new().name(name).spawn(move || serve(mb)).ok()?;
        kept.push(mb);
    }
    Some(kept)
}

/// Posts parts `1..=kept.len()` to the kept threads, runs part 0 here and waits for all.
fn run_kept(kept: &[&'static Mailbox], f: &(dyn Fn(usize) + Sync)) {
    // SAFETY: only the lifetime is erased; this function does not return (nor unwind) before
    // every posted part is counted done, after which no thread touches `f`.
    let fp: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
    DONE.remaining.store(kept.len(), Ordering::Release);
    for (i, mb) in kept.iter().enumerate() {
        let mut slot = lock(&mb.slot);
        slot.job = Some(Job { f: fp, part: i + 1 });
        mb.full.store(true, Ordering::Release);
        if slot.parked {
            mb.wake.notify_one();
        }
    }
    let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
    let start = Instant::now();
    while DONE.remaining.load(Ordering::Acquire) != 0 && start.elapsed() < SPIN {
        for _ in 0..64 {
            std::hint::spin_loop();
        }
    }
    let mut done = lock(&DONE.lock);
    while DONE.remaining.load(Ordering::Acquire) != 0 {
        done.caller_parked = true;
        done = DONE.wake.wait(done).unwrap_or_else(|e| e.into_inner());
        done.caller_parked = false;
    }
    let theirs = done.panic.take();
    drop(done);
    if let Err(p) = mine {
        resume_unwind(p);
    }
    if let Some(p) = theirs {
        resume_unwind(p);
    }
}

/// A kept thread's loop: wait for a job, run it, count it done.
fn serve(mb: &'static Mailbox) {
    loop {
        let start = Instant::now();
        while !mb.full.load(Ordering::Acquire) && start.elapsed() < SPIN {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
        }
        let job = {
            let mut slot = lock(&mb.slot);
            while slot.job.is_none() {
                slot.parked = true;
                slot = mb.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
                slot.parked = false;
            }
            mb.full.store(false, Ordering::Relaxed);
            slot.job.take()
        };
        let Some(job) = job else { continue };
        // SAFETY: the caller keeps the function alive until this part is counted done below.
        let r = catch_unwind(AssertUnwindSafe(|| unsafe { (*job.f)(job.part) }));
        if let Err(p) = r {
            lock(&DONE.lock).panic.get_or_insert(p);
        }
        if DONE.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let done = lock(&DONE.lock);
            if done.caller_parked {
                DONE.wake.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// Every part runs once, on distinct threads at the same time (a barrier over all parts
    /// would hang otherwise), over many calls, including nested ones.
    #[test]
    fn every_part_runs_once_and_concurrently() {
        for parts in [2, 3, 5, 2] {
            for _ in 0..50 {
                let seen = AtomicU64::new(0);
                let barrier = std::sync::Barrier::new(parts);
                run_parts(parts, |p| {
                    barrier.wait();
                    assert_eq!(seen.fetch_or(1 << p, Ordering::Relaxed) & (1 << p), 0, "part {p} twice");
                    if p == 1 {
                        // A nested call finds the kept threads busy and spawns its own.
                        let inner = AtomicUsize::new(0);
                        run_parts(3, |q| {
                            inner.fetch_add(q + 1, Ordering::Relaxed);
                        });
                        assert_eq!(inner.into_inner(), 6);
                    }
                });
                assert_eq!(seen.into_inner(), (1 << parts) - 1);
            }
        }
    }

    /// Runs three parts of which part `bad` panics: the caller gets that part's own payload,
    /// after the other two finished.
    fn assert_part_panic_propagates(bad: usize) {
        let finished = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            run_parts(3, |p| {
                if p == bad {
                    panic!("part {p} fails");
                }
                std::thread::sleep(Duration::from_millis(20));
                finished.fetch_add(1, Ordering::Relaxed);
            })
        }));
        let msg = r.expect_err("the panic was lost");
        assert_eq!(msg.downcast_ref::<String>().map(String::as_str), Some(format!("part {bad} fails").as_str()));
        assert_eq!(finished.load(Ordering::Relaxed), 2, "returned before the other parts finished");
    }

    /// A panic in a kept thread's part, or in the caller's, reaches the caller after every
    /// part finished, and the kept threads serve the next call.
    #[test]
    fn a_part_panic_propagates_and_the_threads_stay_usable() {
        for bad in [0, 1, 2] {
            assert_part_panic_propagates(bad);
            let sum = AtomicUsize::new(0);
            run_parts(3, |p| {
                sum.fetch_add(p, Ordering::Relaxed);
            });
            assert_eq!(sum.into_inner(), 3);
        }
    }

    /// With the kept threads busy (their lock held here), the parts run on scoped threads, and
    /// a part's panic still reaches the caller with its own payload after every part finished.
    #[test]
    fn a_part_panic_propagates_from_scoped_threads_too() {
        let _busy = lock(&KEPT);
        for bad in [0, 1, 2] {
            assert_part_panic_propagates(bad);
        }
    }

    /// Callers on several threads at once each get all their parts run.
    #[test]
    fn concurrent_callers_share_or_fall_back() {
        std::thread::scope(|s| {
            for t in 0..4usize {
                s.spawn(move || {
                    for _ in 0..100 {
                        let sum = AtomicUsize::new(0);
                        run_parts(2 + t % 2, |p| {
                            sum.fetch_add(p + 1, Ordering::Relaxed);
                        });
                        let n = 2 + t % 2;
                        assert_eq!(sum.into_inner(), n * (n + 1) / 2);
                    }
                });
            }
        });
    }
}
