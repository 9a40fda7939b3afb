//! A read-ahead buffer under a connection's stream. russh reads every packet with two exact
//! reads (its length block, then the rest), which on a bare socket costs two system calls per
//! packet and a third that finds nothing; reading ahead takes in all that has arrived in one.
//! On a 2-core machine those calls are what separated our uploads from scp's.
//!
//! Unlike tokio's `BufReader`, the buffer is neither allocated before the first read nor zeroed:
//! memory is touched only by bytes that arrived together, so each idle connection of a large
//! fleet stays small.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one read from the stream takes in: several full SSH packets (32 KiB of data each).
const READ_AHEAD: usize = 256 * 1024;

/// `inner` with reads served from what was read ahead; writes pass straight through.
pub struct ReadAhead<S> {
    inner: S,
    ahead: BytesMut,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> ReadAhead<S> {
        ReadAhead {
            inner,
            ahead: BytesMut::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.ahead.is_empty() {
            // A read as large as the buffer gains nothing from a copy.
            if out.remaining() >= READ_AHEAD {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            // Empty, so this reuses the allocation once it exists.
            this.ahead.reserve(READ_AHEAD);
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.inner),
                cx,
                &mut this.ahead
            ))?;
            if read == 0 {
                return Poll::Ready(Ok(()));
            }
        }
        let n = out.remaining().min(this.ahead.len());
        out.put_slice(&this.ahead[..n]);
        this.ahead.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn reads_should_see_the_stream_as_it_was_sent() {
        let (mut near, far) = tokio::io::duplex(1 << 20);
        let mut far = ReadAhead::new(far);
        let sent: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                for chunk in sent.chunks(7_001) {
                    near.write_all(chunk).await.unwrap();
                }
                near
            })
        };
        let mut got = Vec::new();
        // Small exact reads (as russh makes), then one larger than the buffer, then the rest.
        let mut small = [0u8; 16];
        for _ in 0..100 {
            far.read_exact(&mut small).await.unwrap();
            got.extend_from_slice(&small);
        }
        let mut large = vec![0u8; READ_AHEAD + 1];
        far.read_exact(&mut large).await.unwrap();
        got.extend_from_slice(&large);
        let mut near = writer.await.unwrap();
        far.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        near.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back", "writes pass through");
        drop(near);
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, sent);
    }
}
