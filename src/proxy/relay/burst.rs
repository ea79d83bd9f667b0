//! Chunks that arrive together go out together.
//!
//! hyper's client hands an answer's body over from its connection's task
//! one chunk at a time, and hyper's server writes to the socket whenever
//! the body it sends has nothing ready. So a stream the upstream wrote in
//! one burst — every event of a fast answer, read in one or two socket
//! reads — left Flywheel as a socket write per event: 31 writes for a
//! 29-event answer, where nginx makes five. [`Bursts`] gives the upstream's
//! connection a turn of the runtime after each chunk: what it had ready
//! joins the chunk, and what it did not have is not waited for. A stream
//! the upstream paces goes out chunk by chunk, each a turn later at most.
//! The first chunk is not held: the client's time to first byte stays
//! what it was.
//!
//! A turn is counted in polls. The chunk taken wakes the upstream
//! connection's task, and `Bursts` wakes its own, which runs after it. But
//! hyper's server polls a body that was not ready a second time before it
//! lets its task go, so the second poll in a row comes within the same
//! turn, and only the third after it. A server that polled differently
//! would make `Bursts` join less, or hold a chunk one turn more; never
//! hold it longer.

use bytes::{Bytes, BytesMut};
use futures_util::stream::Fuse;
use futures_util::{Stream, StreamExt};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Past this, what is held goes out without waiting for more: the most a
/// stream holds back, about fifty events of a chat answer.
const MAX_HELD: usize = 16 * 1024;

/// Polls in a row that find nothing new before what is held goes out:
/// the third is the first after the upstream connection's turn.
const POLLS_PER_TURN: u8 = 3;

/// A stream of byte chunks that joins the chunks its inner stream has
/// ready one after the other.
pub struct Bursts<S, E> {
    /// Fused: past its end it stays ended, however often it is polled.
    inner: Fuse<S>,
    held: Held,
    /// Polls since the last chunk that found the inner stream not ready.
    idle_polls: u8,
    /// The inner stream's error, passed on after what was held.
    error: Option<E>,
    /// The first chunk went out.
    started: bool,
}

impl<S: Stream, E> Bursts<S, E> {
    pub fn new(inner: S) -> Self {
        Self {
            inner: inner.fuse(),
            held: Held::Nothing,
            idle_polls: 0,
            error: None,
            started: false,
        }
    }
}

/// What is held back: one chunk as it came, or several joined.
enum Held {
    Nothing,
    One(Bytes),
    Joined(BytesMut),
}

impl Held {
    fn push(&mut self, chunk: Bytes) {
        *self = match std::mem::replace(self, Held::Nothing) {
            Held::Nothing => Held::One(chunk),
            Held::One(first) => {
                // Room for a few more chunks of the same size: a burst
                // rarely stops at two.
                let mut joined = BytesMut::with_capacity(first.len() + chunk.len() * 4);
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&chunk);
                Held::Joined(joined)
            }
            Held::Joined(mut joined) => {
                joined.extend_from_slice(&chunk);
                Held::Joined(joined)
            }
        };
    }

    fn len(&self) -> usize {
        match self {
            Held::Nothing => 0,
            Held::One(b) => b.len(),
            Held::Joined(b) => b.len(),
        }
    }

    fn take(&mut self) -> Option<Bytes> {
        match std::mem::replace(self, Held::Nothing) {
            Held::Nothing => None,
            Held::One(b) => Some(b),
            Held::Joined(b) => Some(b.freeze()),
        }
    }
}

impl<S, E> Stream for Bursts<S, E>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(error) = this.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        loop {
            match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) if !this.started => {
                    this.started = true;
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    this.idle_polls = 0;
                    this.held.push(chunk);
                    if this.held.len() >= MAX_HELD {
                        return Poll::Ready(this.held.take().map(Ok));
                    }
                }
                Poll::Ready(end) => {
                    let Some(bytes) = this.held.take() else {
                        return Poll::Ready(end);
                    };
                    // The end comes again from the fused stream; an error
                    // is kept for the next poll.
                    this.error = end.and_then(Result::err);
                    return Poll::Ready(Some(Ok(bytes)));
                }
                Poll::Pending if this.held.len() == 0 => return Poll::Pending,
                Poll::Pending => {
                    this.idle_polls += 1;
                    if this.idle_polls >= POLLS_PER_TURN {
                        this.idle_polls = 0;
                        return Poll::Ready(this.held.take().map(Ok));
                    }
                    // Woken at once: the task runs again behind the
                    // upstream connection's, which taking the chunk woke.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use std::convert::Infallible;
    use tokio::sync::mpsc;

    type Chunk = Result<Bytes, Infallible>;
    type Channel = Bursts<Pin<Box<dyn Stream<Item = Chunk>>>, Infallible>;

    fn chunk(text: &'static str) -> Chunk {
        Ok(Bytes::from_static(text.as_bytes()))
    }

    /// The inner stream as a channel the test fills, as an upstream would,
    /// past its first chunk.
    fn channel() -> (mpsc::UnboundedSender<Chunk>, Channel) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let inner: Pin<Box<dyn Stream<Item = Chunk>>> =
            Box::pin(stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let mut bursts = Bursts::new(inner);
        tx.send(chunk("data: first\n\n")).unwrap();
        assert_eq!(
            poll(&mut bursts),
            Poll::Ready(Some("data: first\n\n".into()))
        );
        (tx, bursts)
    }

    fn poll(bursts: &mut Channel) -> Poll<Option<String>> {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        bursts.poll_next_unpin(&mut cx).map(|item| {
            item.map(|chunk| match chunk {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(never) => match never {},
            })
        })
    }

    /// Polls until something goes out, as the turns pass.
    fn next_out(bursts: &mut Channel) -> Option<String> {
        for _ in 0..POLLS_PER_TURN {
            if let Poll::Ready(out) = poll(bursts) {
                return out;
            }
        }
        panic!("held past its turn");
    }

    #[test]
    fn the_first_chunk_goes_out_at_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let inner: Pin<Box<dyn Stream<Item = Chunk>>> =
            Box::pin(stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let mut bursts = Bursts::new(inner);
        assert_eq!(poll(&mut bursts), Poll::Pending);
        tx.send(chunk("data: a\n\n")).unwrap();
        tx.send(chunk("data: b\n\n")).unwrap();
        assert_eq!(poll(&mut bursts), Poll::Ready(Some("data: a\n\n".into())));
        assert_eq!(next_out(&mut bursts).as_deref(), Some("data: b\n\n"));
    }

    #[test]
    fn chunks_ready_together_go_out_as_one() {
        let (tx, mut bursts) = channel();
        for text in ["data: a\n\n", "data: b\n\n", "data: c\n\n"] {
            tx.send(chunk(text)).unwrap();
        }
        // The upstream is given its turn to hand over more…
        assert_eq!(poll(&mut bursts), Poll::Pending);
        // …and it had nothing more: the three go out in one piece.
        assert_eq!(
            next_out(&mut bursts).as_deref(),
            Some("data: a\n\ndata: b\n\ndata: c\n\n")
        );
        // Nothing held: nothing goes out, however often it is polled.
        for _ in 0..2 * POLLS_PER_TURN {
            assert_eq!(poll(&mut bursts), Poll::Pending);
        }
    }

    #[test]
    fn a_chunk_waits_for_the_upstream_s_turn_and_no_more() {
        let (tx, mut bursts) = channel();
        tx.send(chunk("data: a\n\n")).unwrap();
        assert_eq!(poll(&mut bursts), Poll::Pending);
        // What arrives during the turn joins it, and the turn starts again.
        tx.send(chunk("data: b\n\n")).unwrap();
        for _ in 1..POLLS_PER_TURN {
            assert_eq!(poll(&mut bursts), Poll::Pending);
        }
        assert_eq!(
            poll(&mut bursts),
            Poll::Ready(Some("data: a\n\ndata: b\n\n".into()))
        );
        tx.send(chunk("data: c\n\n")).unwrap();
        assert_eq!(next_out(&mut bursts).as_deref(), Some("data: c\n\n"));
    }

    #[test]
    fn the_end_follows_what_was_held() {
        let (tx, mut bursts) = channel();
        tx.send(chunk("data: a\n\n")).unwrap();
        tx.send(chunk("data: [DONE]\n\n")).unwrap();
        drop(tx);
        assert_eq!(
            poll(&mut bursts),
            Poll::Ready(Some("data: a\n\ndata: [DONE]\n\n".into()))
        );
        assert_eq!(poll(&mut bursts), Poll::Ready(None));
        // Polled again after its end, it stays ended.
        assert_eq!(poll(&mut bursts), Poll::Ready(None));
    }

    #[test]
    fn an_error_follows_what_was_held() {
        let inner = stream::iter([
            Ok(Bytes::from_static(b"data: first\n\n")),
            Ok(Bytes::from_static(b"data: a\n\n")),
            Ok(Bytes::from_static(b"data: b\n\n")),
            Err("broke"),
        ]);
        let mut bursts = Bursts::new(inner);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut next = || bursts.poll_next_unpin(&mut cx);
        assert!(matches!(next(), Poll::Ready(Some(Ok(b))) if b == "data: first\n\n"));
        assert!(matches!(next(), Poll::Ready(Some(Ok(b))) if b == "data: a\n\ndata: b\n\n"));
        assert!(matches!(next(), Poll::Ready(Some(Err("broke")))));
        assert!(matches!(next(), Poll::Ready(None)));
    }

    #[test]
    fn a_long_burst_is_cut_at_the_bound() {
        let (tx, mut bursts) = channel();
        let event = concat!(
            "data: ",
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "\n\n"
        );
        let per_write = MAX_HELD.div_ceil(event.len());
        for _ in 0..per_write + 1 {
            tx.send(chunk(event)).unwrap();
        }
        match poll(&mut bursts) {
            Poll::Ready(Some(first)) => assert_eq!(first.len(), per_write * event.len()),
            other => panic!("expected the bound's worth at once, got {other:?}"),
        }
        assert_eq!(next_out(&mut bursts).as_deref(), Some(event));
    }
}
