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
//! Miri finds no data race or undefined behaviour in its tests, over
//! several seeds: `MIRIFLAGS=-Zmiri-many-seeds=0..6 cargo +nightly miri test
//! -p mod_rst --lib queue::` (nightly's `miri` and `rust-src` components).
//!
//! Pushing wakes nobody: the consumer sleeps its own time, and a producer
//! that must be seen at once calls [`Producer::wake`] (control commands do;
//! frames, 2 per call every 20 ms, do not: a wake per frame is what the
//! sender's batching avoids).

use std::cell::UnsafeCell;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

/// An atomic counter alone on its cache line. A counter that media threads
/// bump per frame on one core, sharing a line with those the sender thread
/// bumps on the other, made each of the sender's adds wait for the line
/// (`perf`: an eighth of the sender thread's time).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct OwnLine(AtomicU64);

impl std::ops::Deref for OwnLine {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

struct Slot<T> {
    /// Whose turn it is, by position in the queue (which only grows): equal
    /// to a position, the slot is free for that position's producer; one
    /// more, that producer wrote it; the position plus the capacity, the
    /// consumer read it and the slot is free for the next lap.
    turn: AtomicU64,
    value: UnsafeCell<T>,
}

struct Shared<T> {
    /// The next position a producer takes.
    tail: OwnLine,
    slots: Box<[Slot<T>]>,
    /// Producers alive: when none is, the consumer is woken and told.
    producers: AtomicUsize,
    /// Set when the consumer is dropped: control commands are refused then.
    closed: AtomicBool,
    /// The consumer's thread, once it has waited.
    consumer: OnceLock<Thread>,
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
        if let Some(thread) = self.consumer.get() {
            thread.unpark();
        }
    }
}

/// A bounded queue of `capacity` slots, each holding `T::default()` to
/// begin with. At least two: with one, a slot's "written" turn would equal
/// its "free for the next lap" one.
pub fn queue<T: Default>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let slots = (0..capacity.max(2) as u64)
        .map(|position| Slot {
            turn: AtomicU64::new(position),
            value: UnsafeCell::new(T::default()),
        })
        .collect();
    let shared = Arc::new(Shared {
        tail: OwnLine::default(),
        slots,
        producers: AtomicUsize::new(1),
        closed: AtomicBool::new(false),
        consumer: OnceLock::new(),
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
    fn value(&mut self) -> &mut T {
        // SAFETY: this producer took the slot's position and has not
        // published it: no other thread reaches the value until it does.
        unsafe { &mut *self.slot.value.get() }
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
                *taken.value() = value;
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
                write(taken.value());
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
        Some(read(unsafe { &mut *slot.value.get() }))
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
        self.shared.consumer.get_or_init(std::thread::current);
        // Pairs with the fence in `Shared::wake_consumer`.
        fence(Ordering::SeqCst);
        if !self.is_empty() || self.is_disconnected() {
            return;
        }
        match timeout {
            Some(timeout) => std::thread::park_timeout(timeout),
            None => std::thread::park(),
        }
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

#[cfg(test)]
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
