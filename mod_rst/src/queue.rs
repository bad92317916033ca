//! The media threads' queue to the sender thread: bounded, many producers,
//! one consumer, and values written and read where they lie in the queue.
//!
//! Why not a crate: `std::sync::mpsc::sync_channel` (which this replaced) and
//! crossbeam's `ArrayQueue` move each value in and out. A frame command is
//! 352 bytes, so a 160-byte G.711 frame cost the media thread the zeroing
//! of a buffer and two copies, and the sender thread one more, six cache
//! lines each way where three hold the frame. Inside FreeSWITCH, `perf` put
//! the queue's part at about two fifths of the callbacks' cost. `thingbuf`
//! writes in place, but has an open report of senders spinning forever
//! (hawkw/thingbuf#83).
//!
//! The algorithm is Dmitry Vyukov's bounded queue, the one under crossbeam's
//! `ArrayQueue`, with a single consumer. Every slot always holds a valid `T`
//! (`T::default()` at first), so a producer overwrites only what it needs
//! and the consumer reads in place. Nothing is ever uninitialized, and a
//! writer that panics still leaves a valid value behind, published.
//!
//! Checked two ways. Loom explores the interleavings of small cases (up to
//! three preemptions), and the values the memory model lets each load see
//! (all but load buffering, which loom does not model): two producers and
//! the consumer round a queue of two slots; a push and its wake, and the
//! last producer's drop, racing the consumer's park. `scripts/test.sh` runs
//! them (`RUSTFLAGS="--cfg loom" cargo test -p mod_rst --release --lib
//! queue::`, in a target folder of its own); a Release store made Relaxed,
//! or either SeqCst fence taken out, fails them.
//! Under `cfg(loom)` the atomics, the cell, the consumer's thread and its
//! parking are loom's (module `sync`). Miri finds no data race or undefined
//! behaviour in the ordinary tests, over several seeds:
//! `MIRIFLAGS=-Zmiri-many-seeds=0..6 cargo +nightly miri test -p mod_rst
//! --lib queue::` (nightly's `miri` and `rust-src` components).
//!
//! Pushing wakes nobody: the consumer sleeps its own time, and a producer
//! that must be seen at once calls [`Producer::wake`] (control commands do;
//! frames, 2 per call every 20 ms, do not: a wake per frame is what the
//! sender's batching avoids).

use std::time::Duration;

use sync::{fence, Arc, AtomicBool, AtomicU64, AtomicUsize, Cell, ConsumerThread, Ordering};

/// What the queue synchronizes with: std's atomics, cell and parking.
#[cfg(not(all(test, loom)))]
mod sync {
    pub use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
    pub use std::sync::Arc;
    use std::sync::OnceLock;
    use std::thread::Thread;
    use std::time::Duration;

    /// A value reached only by whoever the queue's turns say may.
    #[derive(Debug)]
    pub struct Cell<T>(std::cell::UnsafeCell<T>);

    impl<T> Cell<T> {
        pub fn new(value: T) -> Cell<T> {
            Cell(std::cell::UnsafeCell::new(value))
        }

        /// Runs `f` on the value.
        ///
        /// # Safety
        /// No other thread reaches the value meanwhile.
        pub unsafe fn with_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
            // SAFETY: the caller's promise.
            f(unsafe { &mut *self.0.get() })
        }
    }

    /// The consumer's thread, set by the consumer when it first parks, read
    /// by producers that wake it.
    #[derive(Debug, Default)]
    pub struct ConsumerThread(OnceLock<Thread>);

    impl ConsumerThread {
        /// Called by the consumer only.
        pub fn set_current(&self) {
            self.0.get_or_init(std::thread::current);
        }

        pub fn unpark(&self) {
            if let Some(thread) = self.0.get() {
                thread.unpark();
            }
        }

        pub fn park(timeout: Option<Duration>) {
            match timeout {
                Some(timeout) => std::thread::park_timeout(timeout),
                None => std::thread::park(),
            }
        }
    }
}

/// The same under `cfg(loom)`, loom's models, so that loom checks the queue
/// as it is.
#[cfg(all(test, loom))]
mod sync {
    use loom::cell::UnsafeCell;
    pub use loom::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
    pub use loom::sync::Arc;
    use loom::thread::Thread;
    use std::time::Duration;

    #[derive(Debug)]
    pub struct Cell<T>(UnsafeCell<T>);

    impl<T> Cell<T> {
        pub fn new(value: T) -> Cell<T> {
            Cell(UnsafeCell::new(value))
        }

        /// # Safety
        /// No other thread reaches the value meanwhile (loom checks it).
        pub unsafe fn with_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
            // SAFETY: the caller's promise.
            self.0.with_mut(|value| f(unsafe { &mut *value }))
        }
    }

    /// `OnceLock`'s synchronization as loom can see it: the thread written
    /// by the consumer before a Release store, read after an Acquire load.
    /// A lock here would synchronize more than the real queue does, and
    /// could hide a missing fence.
    #[derive(Debug)]
    pub struct ConsumerThread {
        set: AtomicBool,
        thread: UnsafeCell<Option<Thread>>,
    }

    impl Default for ConsumerThread {
        fn default() -> Self {
            ConsumerThread {
                set: AtomicBool::new(false),
                thread: UnsafeCell::new(None),
            }
        }
    }

    impl ConsumerThread {
        pub fn set_current(&self) {
            if !self.set.load(Ordering::Acquire) {
                // SAFETY: only the consumer writes, once, before `set`.
                self.thread
                    .with_mut(|thread| unsafe { *thread = Some(loom::thread::current()) });
                self.set.store(true, Ordering::Release);
            }
        }

        pub fn unpark(&self) {
            if self.set.load(Ordering::Acquire) {
                // SAFETY: written before `set`, never again.
                let thread = self.thread.with(|thread| unsafe { (*thread).clone() });
                if let Some(thread) = thread {
                    thread.unpark();
                }
            }
        }

        /// Loom has no timed park: a park with a timeout is one that timed
        /// out at once (a wake-up with nothing to do).
        pub fn park(timeout: Option<Duration>) {
            match timeout {
                Some(_) => loom::thread::yield_now(),
                None => loom::thread::park(),
            }
        }
    }
}

/// An atomic counter alone on its cache line. A counter that media threads
/// bump per frame on one core, sharing a line with those the sender thread
/// bumps on the other, made each of the sender's adds wait for the line
/// (`perf`: an eighth of the sender thread's time).
/// The queue's own tail is one too, of [`sync`]'s atomic.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct OwnLine<A = std::sync::atomic::AtomicU64>(A);

impl<A> std::ops::Deref for OwnLine<A> {
    type Target = A;

    fn deref(&self) -> &A {
        &self.0
    }
}

struct Slot<T> {
    /// Whose turn it is, by position in the queue (which only grows): equal
    /// to a position, the slot is free for that position's producer; one
    /// more, that producer wrote it; the position plus the capacity, the
    /// consumer read it and the slot is free for the next lap.
    turn: AtomicU64,
    value: Cell<T>,
}

struct Shared<T> {
    /// The next position a producer takes.
    tail: OwnLine<AtomicU64>,
    slots: Box<[Slot<T>]>,
    /// Producers alive: when none is, the consumer is woken and told.
    producers: AtomicUsize,
    /// Set when the consumer is dropped: control commands are refused then.
    closed: AtomicBool,
    /// The consumer's thread, once it has waited.
    consumer: ConsumerThread,
}

// SAFETY: a slot's value is only reached through its `turn`: by the one
// producer that took its position (until it publishes), then by the one
// consumer (until it frees the slot), so a `T` is never shared, only sent.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    fn capacity(&self) -> u64 {
        self.slots.len() as u64
    }

    fn slot(&self, position: u64) -> &Slot<T> {
        &self.slots[(position % self.capacity()) as usize]
    }

    fn wake_consumer(&self) {
        // Pairs with the fence in `Consumer::park`: either the consumer sees
        // what was pushed before this, or this sees the consumer's thread,
        // whose unpark then makes its park return.
        fence(Ordering::SeqCst);
        self.consumer.unpark();
    }
}

/// A bounded queue of `capacity` slots, each holding `T::default()` to
/// begin with. At least two: with one, a slot's "written" turn would equal
/// its "free for the next lap" one.
pub fn queue<T: Default>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let slots = (0..capacity.max(2) as u64)
        .map(|position| Slot {
            turn: AtomicU64::new(position),
            value: Cell::new(T::default()),
        })
        .collect();
    let shared = Arc::new(Shared {
        tail: OwnLine(AtomicU64::new(0)),
        slots,
        producers: AtomicUsize::new(1),
        closed: AtomicBool::new(false),
        consumer: ConsumerThread::default(),
    });
    (
        Producer {
            shared: shared.clone(),
        },
        Consumer { shared, head: 0 },
    )
}

/// The pushing side: cheap to clone, never blocks.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
}

/// A slot taken by a producer, published when dropped (even while a
/// panicking writer unwinds: the slot holds a valid value throughout).
struct Taken<'a, T> {
    slot: &'a Slot<T>,
    position: u64,
}

impl<T> Taken<'_, T> {
    fn write<R>(&mut self, write: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: this producer took the slot's position and has not
        // published it: no other thread reaches the value until it does.
        unsafe { self.slot.value.with_mut(write) }
    }
}

impl<T> Drop for Taken<'_, T> {
    fn drop(&mut self) {
        self.slot.turn.store(self.position + 1, Ordering::Release);
    }
}

impl<T> Producer<T> {
    /// The next free slot, or `None` when the queue is full.
    fn take(&self) -> Option<Taken<'_, T>> {
        let shared = &*self.shared;
        let mut position = shared.tail.load(Ordering::Relaxed);
        loop {
            let slot = shared.slot(position);
            let turn = slot.turn.load(Ordering::Acquire);
            if turn == position {
                match shared.tail.compare_exchange_weak(
                    position,
                    position + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Some(Taken { slot, position }),
                    Err(now) => position = now,
                }
            } else if turn < position {
                // The slot still holds the value of the lap before: full.
                return None;
            } else {
                // Another producer took this position meanwhile.
                position = shared.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Queues `value`, or gives it back when the queue is full.
    pub fn try_push(&self, value: T) -> Result<(), T> {
        match self.take() {
            Some(mut taken) => {
                taken.write(|slot| *slot = value);
                Ok(())
            }
            None => Err(value),
        }
    }

    /// Lets `write` change the next free slot's value in place (it holds
    /// whatever the consumer left there) and queues it; `false` when the
    /// queue is full (then `write` is not called).
    pub fn try_push_with(&self, write: impl FnOnce(&mut T)) -> bool {
        match self.take() {
            Some(mut taken) => {
                taken.write(write);
                true
            }
            None => false,
        }
    }

    /// Wakes the consumer if it is parked ([`Consumer::park`]).
    pub fn wake(&self) {
        self.shared.wake_consumer();
    }

    /// The consumer is gone: nothing queued now will be read.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

impl<T> Clone for Producer<T> {
    fn clone(&self) -> Self {
        self.shared.producers.fetch_add(1, Ordering::Relaxed);
        Producer {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        if self.shared.producers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.wake_consumer();
        }
    }
}

impl<T> std::fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.shared.capacity())
            .finish()
    }
}

/// The one reading side.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// The next position to read.
    head: u64,
}

impl<T> Consumer<T> {
    /// Runs `read` on the oldest value, where it lies, then frees its slot
    /// for producers (with what `read` left in it). `None` when the queue is
    /// empty, or while the oldest value's producer is still writing it.
    pub fn try_pop_with<R>(&mut self, read: impl FnOnce(&mut T) -> R) -> Option<R> {
        if self.is_empty() {
            return None;
        }
        let shared = &*self.shared;
        let slot = shared.slot(self.head);
        // Frees the slot after `read`, even if `read` panics.
        struct Free<'a>(&'a AtomicU64, u64);
        impl Drop for Free<'_> {
            fn drop(&mut self) {
                self.0.store(self.1, Ordering::Release);
            }
        }
        let _free = Free(&slot.turn, self.head + shared.capacity());
        self.head += 1;
        // SAFETY: the slot's turn says its producer published it, and no
        // producer takes it again until `_free` hands it on, after `read`.
        Some(unsafe { slot.value.with_mut(read) })
    }

    /// Nothing to read now (or the oldest value's producer is still
    /// writing it). Its Acquire load is what makes a published value
    /// visible to [`Consumer::try_pop_with`].
    pub fn is_empty(&self) -> bool {
        self.shared.slot(self.head).turn.load(Ordering::Acquire) != self.head + 1
    }

    /// Every producer is gone.
    pub fn is_disconnected(&self) -> bool {
        self.shared.producers.load(Ordering::Acquire) == 0
    }

    /// Sleeps for `timeout` (`None`: without end) unless there is something
    /// to read or no producer is left; a producer's [`Producer::wake`] or
    /// the last producer's drop ends it early. It may also end early for no
    /// reason (a spurious wake-up): callers look again.
    pub fn park(&self, timeout: Option<Duration>) {
        self.shared.consumer.set_current();
        // Pairs with the fence in `Shared::wake_consumer`.
        fence(Ordering::SeqCst);
        if !self.is_empty() || self.is_disconnected() {
            return;
        }
        ConsumerThread::park(timeout);
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}

impl<T> std::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.shared.capacity())
            .field("head", &self.head)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    fn drain<T: Default>(consumer: &mut Consumer<T>) -> Vec<T> {
        std::iter::from_fn(|| consumer.try_pop_with(std::mem::take)).collect()
    }

    #[test]
    fn a_queue_of_one_has_two_slots() {
        let (producer, mut consumer) = queue::<u32>(1);
        assert_eq!(
            (producer.try_push(1), producer.try_push(2)),
            (Ok(()), Ok(()))
        );
        assert_eq!(producer.try_push(3), Err(3));
        assert_eq!(drain(&mut consumer), vec![1, 2]);
    }

    #[test]
    fn values_come_out_in_order_and_a_full_queue_gives_the_value_back() {
        let (producer, mut consumer) = queue::<u32>(3);
        // Many laps round the three slots.
        for lap in 0..1000 {
            let first = lap * 3;
            for value in first..first + 3 {
                assert_eq!(producer.try_push(value), Ok(()));
            }
            assert_eq!(producer.try_push(99), Err(99), "full after 3");
            assert!(!producer.try_push_with(|_| panic!("not called when full")));
            assert_eq!(drain(&mut consumer), vec![first, first + 1, first + 2]);
            assert!(consumer.is_empty());
        }
    }

    #[test]
    fn a_writer_sees_what_the_reader_left_and_writes_in_place() {
        let (producer, mut consumer) = queue::<[u8; 4]>(2);
        for _ in 0..2 {
            assert!(producer.try_push_with(|slot| {
                assert_eq!(*slot, [0; 4], "the default to begin with");
                slot[0] = 1;
            }));
            let read = consumer.try_pop_with(|slot| std::mem::replace(slot, [9; 4]));
            assert_eq!(read, Some([1, 0, 0, 0]));
        }
        // Back at the first slot.
        assert!(producer.try_push_with(|slot| {
            assert_eq!(*slot, [9; 4], "what the reader left");
            slot[1] = 2;
        }));
        assert_eq!(consumer.try_pop_with(|slot| *slot), Some([9, 2, 9, 9]));
    }

    /// A value large enough to tear if writes and reads overlapped: every
    /// word holds the same number.
    #[derive(Clone, Copy)]
    struct Wide([u64; 40]);

    impl Default for Wide {
        fn default() -> Self {
            Wide([0; 40])
        }
    }

    #[test]
    fn many_producers_lose_nothing_tear_nothing_and_keep_their_own_order() {
        const PRODUCERS: u64 = 4;
        // Miri (`cargo +nightly miri test -p mod_rst --lib queue::`)
        // checks every access for races, slowly: fewer values there.
        const EACH: u64 = if cfg!(miri) { 300 } else { 50_000 };
        let (producer, mut consumer) = queue::<Wide>(64);
        let threads: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let producer = producer.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        let tag = (p << 32) | i;
                        while !producer.try_push_with(|slot| slot.0 = [tag; 40]) {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        drop(producer);
        let mut next = [0u64; PRODUCERS as usize];
        let mut received = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        while received < PRODUCERS * EACH {
            assert!(Instant::now() < deadline, "only {received} values came");
            let Some(value) = consumer.try_pop_with(|slot| *slot) else {
                std::thread::yield_now();
                continue;
            };
            let tag = value.0[0];
            assert!(value.0.iter().all(|&word| word == tag), "a torn value");
            let (p, i) = ((tag >> 32) as usize, tag & 0xffff_ffff);
            assert_eq!(i, next[p], "producer {p}'s values out of order");
            next[p] += 1;
            received += 1;
        }
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(consumer.is_empty());
        assert!(consumer.is_disconnected());
    }

    /// Runs `park` on a thread of its own and waits (bounded) for it to end.
    fn parked(consumer: Consumer<u32>, timeout: Option<Duration>) -> mpsc::Receiver<Consumer<u32>> {
        let (done, ended) = mpsc::channel();
        std::thread::spawn(move || {
            // Spurious wake-ups aside: park until there is something.
            loop {
                consumer.park(timeout);
                if !consumer.is_empty() || consumer.is_disconnected() {
                    break;
                }
            }
            let _ = done.send(consumer);
        });
        ended
    }

    #[test]
    fn a_parked_consumer_wakes_for_a_producers_wake_and_for_the_last_producers_drop() {
        let (producer, consumer) = queue::<u32>(4);
        let ended = parked(consumer, None);
        // Whether the consumer parked yet or not, the value is seen.
        producer.try_push(7).unwrap();
        producer.wake();
        let mut consumer = ended.recv_timeout(Duration::from_secs(60)).expect("woken");
        assert_eq!(consumer.try_pop_with(|v| *v), Some(7));

        let other = producer.clone();
        let ended = parked(consumer, None);
        drop(producer);
        // One producer is left: still parked (it could only end spuriously,
        // and then it parks again).
        assert!(ended.try_recv().is_err());
        drop(other);
        let consumer = ended.recv_timeout(Duration::from_secs(60)).expect("woken");
        assert!(consumer.is_disconnected());
        assert!(consumer.is_empty());
    }

    #[test]
    fn a_pushed_value_without_a_wake_is_seen_when_the_park_times_out() {
        let (producer, consumer) = queue::<u32>(4);
        let ended = parked(consumer, Some(Duration::from_millis(20)));
        producer.try_push(5).unwrap();
        let mut consumer = ended
            .recv_timeout(Duration::from_secs(60))
            .expect("timed out");
        assert_eq!(consumer.try_pop_with(|v| *v), Some(5));
    }

    #[test]
    fn producers_see_the_consumer_gone_and_values_left_inside_are_dropped() {
        let value = Arc::new(());
        let (producer, mut consumer) = queue::<Option<Arc<()>>>(4);
        for _ in 0..3 {
            producer.try_push(Some(value.clone())).unwrap();
        }
        assert_eq!(consumer.try_pop_with(|v| v.take().is_some()), Some(true));
        assert!(!producer.is_closed());
        drop(consumer);
        assert!(producer.is_closed());
        assert_eq!(Arc::strong_count(&value), 3, "two still queued");
        drop(producer);
        assert_eq!(Arc::strong_count(&value), 1, "dropped with the queue");
    }

    #[test]
    fn a_writer_or_reader_that_panics_leaves_the_queue_working() {
        let (producer, mut consumer) = queue::<u32>(2);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            producer.try_push_with(|slot| {
                *slot = 1;
                panic!("a writer's bug");
            })
        }));
        assert!(panicked.is_err());
        // Published, with the value it had when the writer stopped.
        assert_eq!(consumer.try_pop_with(|v| *v), Some(1));
        producer.try_push(2).unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            consumer.try_pop_with(|_| panic!("a reader's bug"))
        }));
        assert!(panicked.is_err());
        // The slot was freed: two more fit, and come out.
        producer.try_push(3).unwrap();
        producer.try_push(4).unwrap();
        assert_eq!(drain(&mut consumer), vec![3, 4]);
    }
}

/// Loom's exhaustive checks of small cases (see the module's doc for the
/// command). A data race on a slot's value, a value torn or lost, a wake-up
/// lost (the consumer parked for ever: loom reports the deadlock) fails.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::thread;

    /// Interleavings with more preemptions than this are not explored: the
    /// bugs of such queues show within two or three (loom's advice).
    fn model(test: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(test);
    }

    /// Two producers push three values between them into two slots while
    /// the consumer takes two, each side trying once per value (a wait
    /// that spins would make loom's paths endless). The positions wrap
    /// round the slots. Every value accepted comes out once, whole, in its
    /// producer's order; only the third push may find the queue full.
    #[test]
    fn two_producers_and_the_consumer_round_two_slots_lose_nothing() {
        model(|| {
            let (producer, mut consumer) = queue::<[u64; 2]>(2);
            // One lap begun: the test's positions 1 to 3 wrap round.
            producer.try_push([0; 2]).unwrap();
            assert_eq!(consumer.try_pop_with(|slot| *slot), Some([0; 2]));
            let threads: Vec<_> = [vec![10u64, 11], vec![20]]
                .into_iter()
                .map(|values| {
                    let producer = producer.clone();
                    thread::spawn(move || {
                        values
                            .into_iter()
                            .filter(|&value| producer.try_push_with(|slot| *slot = [value; 2]))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            drop(producer);
            let read = |consumer: &mut Consumer<[u64; 2]>| {
                consumer.try_pop_with(|slot| *slot).map(|[a, b]| {
                    assert_eq!(a, b, "a torn value");
                    a
                })
            };
            let mut got: Vec<u64> = (0..2).filter_map(|_| read(&mut consumer)).collect();
            let accepted: Vec<Vec<u64>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            got.extend(std::iter::from_fn(|| read(&mut consumer)));
            let total: usize = accepted.iter().map(Vec::len).sum();
            assert!(total >= 2, "two slots free, yet {accepted:?} accepted");
            for values in &accepted {
                let first = values.first().map_or(0, |v| v / 10);
                let theirs: Vec<u64> = got.iter().copied().filter(|v| v / 10 == first).collect();
                assert_eq!(&theirs, values, "got {got:?}");
            }
            assert_eq!(got.len(), total, "got {got:?} of {accepted:?}");
            assert!(consumer.is_empty() && consumer.is_disconnected());
        });
    }

    // The consumer parks on a thread of its own, never joining another:
    // loom cannot take an unpark (a wake that came after the consumer had
    // stopped parking, harmless in std) while its thread waits in `join`.

    #[test]
    fn a_push_and_its_wake_are_never_missed_by_a_parking_consumer() {
        model(|| {
            let (producer, mut consumer) = queue::<[u64; 2]>(2);
            let consumer = thread::spawn(move || loop {
                if let Some(value) = consumer.try_pop_with(|slot| *slot) {
                    break value;
                }
                consumer.park(None);
            });
            let pusher = thread::spawn(move || {
                producer.try_push([7; 2]).unwrap();
                producer.wake();
                // Kept alive: only the wake may end the consumer's park.
                producer
            });
            assert_eq!(consumer.join().unwrap(), [7; 2]);
            drop(pusher.join().unwrap());
        });
    }

    #[test]
    fn the_last_producers_drop_is_never_missed_by_a_parking_consumer() {
        model(|| {
            let (producer, consumer) = queue::<[u64; 2]>(2);
            let other = producer.clone();
            let consumer = thread::spawn(move || {
                while !consumer.is_disconnected() {
                    consumer.park(None);
                }
            });
            let threads = [producer, other].map(|producer| thread::spawn(move || drop(producer)));
            consumer.join().unwrap();
            for thread in threads {
                thread.join().unwrap();
            }
        });
    }
}
