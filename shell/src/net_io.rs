//! A TCP stream that writes each HTTP/2 flush with one syscall.
//!
//! h2 (under tonic and hyper) buffers frames and flushes them together, but on a stream that
//! offers vectored writes it keeps any DATA payload over 256 bytes out of its buffer (it is
//! "chained" as a second iovec) and must flush before it can buffer the next frame. A unary
//! gRPC answer of more than 256 bytes (a 256-byte value read back, say) then leaves as two
//! writes, HEADERS+DATA and then the trailers, and the peer wakes twice to read it (measured
//! with strace: 2.2 writes per read answered). [`OneWrite`] declines vectored writes, so h2
//! copies payloads of up to 1 KiB into its buffer, and gathers what h2 writes until it
//! flushes; larger payloads go out with what is gathered in one vectored write.
//!
//! A flush also waits for one pass of the scheduler, so that the answers of streams that
//! finish together share a write (like Go gRPC's writer, which writes once its queue is
//! empty). Measured on a 3-node cluster under 32 clients: write syscalls per put on the
//! coordinator 1.70 -> 1.12, per read 1.33 -> 1.05.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// Gathered bytes beyond this are written at once rather than held for the flush.
const GATHER_LIMIT: usize = 16 << 10;

/// A [`TcpStream`] whose writes are gathered until `poll_flush` (see the module docs).
pub struct OneWrite {
    io: TcpStream,
    gathered: Vec<u8>,
    /// How much of `gathered` has reached the socket already.
    sent: usize,
    /// The pending flush has waited its one pass (see `poll_flush`).
    deferred: bool,
}

impl OneWrite {
    pub fn new(io: TcpStream) -> Self {
        Self { io, gathered: Vec::new(), sent: 0, deferred: false }
    }

    /// Writes out what is gathered, with `then` after it in the same syscall, until nothing
    /// gathered is left. Returns how much of `then` went too.
    fn drain(&mut self, cx: &mut Context<'_>, then: &[u8]) -> Poll<io::Result<usize>> {
        while self.sent < self.gathered.len() {
            let bufs = [io::IoSlice::new(&self.gathered[self.sent..]), io::IoSlice::new(then)];
            let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &bufs))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let left = self.gathered.len() - self.sent;
            if n >= left {
                self.gathered.clear();
                self.sent = 0;
                return Poll::Ready(Ok(n - left));
            }
            self.sent += n;
        }
        self.gathered.clear();
        self.sent = 0;
        Poll::Ready(Ok(0))
    }
}

impl AsyncRead for OneWrite {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for OneWrite {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.gathered.len() + buf.len() <= GATHER_LIMIT {
            this.gathered.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        // Too much to hold: what is gathered goes now, with as much of `buf` as fits.
        let n = ready!(this.drain(cx, buf))?;
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        if buf.len() <= GATHER_LIMIT {
            this.gathered.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // Corked for one pass of the scheduler: the connection task goes to the back of the
        // run queue, behind the handlers that finish with it (a group commit or a peer's
        // batch releases many answers at once), and their answers leave in this same write.
        if !this.deferred && this.sent < this.gathered.len() {
            this.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.drain(cx, &[]))?;
        this.deferred = false;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.drain(cx, &[]))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl Connected for OneWrite {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The server's accepted connections, each as a [`OneWrite`].
pub struct Incoming(pub TcpIncoming);

impl futures_core::Stream for Incoming {
    type Item = io::Result<OneWrite>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0).poll_next(cx).map(|o| o.map(|r| r.map(OneWrite::new)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (OneWrite, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (OneWrite::new(a.expect("connect")), b.expect("accept").0)
    }

    #[tokio::test]
    async fn small_writes_wait_for_the_flush_and_arrive_in_order() {
        let (mut w, mut r) = pair().await;
        w.write_all(b"headers ").await.expect("write");
        w.write_all(b"data ").await.expect("write");
        // Nothing reaches the socket before the flush.
        let mut probe = [0u8; 1];
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), r.read(&mut probe)).await;
        assert!(early.is_err(), "bytes left before the flush");
        w.write_all(b"trailers").await.expect("write");
        w.flush().await.expect("flush");
        let mut got = vec![0u8; 21];
        r.read_exact(&mut got).await.expect("read");
        assert_eq!(got, b"headers data trailers");
    }

    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_flush_waits_one_pass_so_answers_finished_meanwhile_share_its_write() {
        let (mut w, mut r) = pair().await;
        w.write_all(b"first ").await.expect("write");
        let wakes = std::sync::Arc::new(Wakes(Default::default()));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_pending(), "the first poll of a flush waits");
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 1, "and asks to be polled again at once");
        w.write_all(b"second").await.expect("write");
        let mut probe = [0u8; 1];
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), r.read(&mut probe)).await;
        assert!(early.is_err(), "bytes left before the flush was polled again");
        w.flush().await.expect("flush");
        let mut got = vec![0u8; 12];
        r.read_exact(&mut got).await.expect("read");
        assert_eq!(got, b"first second");
        // With nothing gathered, a flush does not wait.
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_ready());
    }

    #[tokio::test]
    async fn large_writes_pass_through_whole_and_in_order() {
        let (mut w, mut r) = pair().await;
        let big: Vec<u8> = (0..3 * GATHER_LIMIT + 7).map(|i| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 5 + big.len() + 3];
            r.read_exact(&mut got).await.expect("read");
            got
        });
        w.write_all(b"head:").await.expect("write");
        let expect: Vec<u8> = (0..3 * GATHER_LIMIT + 7).map(|i| (i % 251) as u8).collect();
        w.write_all(&expect).await.expect("write");
        w.write_all(b"end").await.expect("write");
        w.shutdown().await.expect("shutdown");
        let got = reader.await.expect("reader");
        assert_eq!(&got[..5], b"head:");
        assert_eq!(&got[5..5 + expect.len()], &expect[..]);
        assert_eq!(&got[5 + expect.len()..], b"end");
    }

    #[test]
    fn declines_vectored_writes_so_h2_copies_small_payloads() {
        // h2 chains DATA payloads over 256 bytes only on streams that write vectored.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let (w, _r) = pair().await;
            assert!(!w.is_write_vectored());
        });
    }
}
