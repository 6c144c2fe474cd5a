//! Length-prefixed Borsh framing of the wire protocol on libp2p streams. The messages
//! themselves live in `agora-wire` and are re-exported here.

pub use agora_wire::protocol::*;

use agora_core::codec;
use borsh::{BorshDeserialize, BorshSerialize};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes read from a stream at a time while a frame arrives.
const READ_CHUNK: usize = 16 * 1024;

/// Writes one length-prefixed Borsh frame of at most [`MAX_FRAME_BYTES`].
pub async fn write_frame<W, T>(w: &mut W, value: &T) -> Result<(), ProtocolError>
where
    W: AsyncWrite + Unpin,
    T: BorshSerialize,
{
    write_frame_max(w, value, MAX_FRAME_BYTES).await
}

/// Reads one frame of at most [`MAX_FRAME_BYTES`]; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R, T>(r: &mut R) -> Result<Option<T>, ProtocolError>
where
    R: AsyncRead + Unpin,
    T: BorshDeserialize,
{
    read_frame_max(r, MAX_FRAME_BYTES).await
}

/// Writes one length-prefixed Borsh frame of at most `max` bytes (protocols that carry
/// model-sized blobs set their own limit).
pub async fn write_frame_max<W, T>(w: &mut W, value: &T, max: usize) -> Result<(), ProtocolError>
where
    W: AsyncWrite + Unpin,
    T: BorshSerialize,
{
    let bytes = codec::encode(value);
    if bytes.len() > max || bytes.len() > u32::MAX as usize {
        return Err(ProtocolError::TooLarge(bytes.len(), max));
    }
    let mut buf = Vec::with_capacity(4 + bytes.len());
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(&bytes);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame of at most `max` bytes; `Ok(None)` at a clean end of stream.
pub async fn read_frame_max<R, T>(r: &mut R, max: usize) -> Result<Option<T>, ProtocolError>
where
    R: AsyncRead + Unpin,
    T: BorshDeserialize,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(ProtocolError::TooLarge(len, max));
    }
    // The buffer grows as bytes arrive: a peer that declares a large frame and sends
    // nothing makes the reader hold one chunk, not the declared length.
    let mut buf = Vec::with_capacity(len.min(READ_CHUNK));
    let mut chunk = [0u8; READ_CHUNK];
    while buf.len() < len {
        let want = (len - buf.len()).min(READ_CHUNK);
        let got = r.read(&mut chunk[..want]).await?;
        if got == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        buf.extend_from_slice(&chunk[..got]);
    }
    T::try_from_slice(&buf)
        .map(Some)
        .map_err(|e| ProtocolError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn frames_round_trip_and_oversized_lengths_are_refused() {
        futures::executor::block_on(async {
            let frame = Frame::Error {
                code: ErrorCode::Busy,
                message: "queue full".into(),
            };
            let mut buf = Vec::new();
            write_frame(&mut buf, &frame).await.unwrap();
            let back: Frame = read_frame(&mut buf.as_slice()).await.unwrap().unwrap();
            assert_eq!(back, frame);
            let huge = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes();
            let r: Result<Option<Frame>, _> = read_frame(&mut huge.as_slice()).await;
            assert!(matches!(r, Err(ProtocolError::TooLarge(..))));
            let garbage = [0, 0, 0, 3, 9, 9, 9];
            let r: Result<Option<Frame>, _> = read_frame(&mut garbage.as_slice()).await;
            assert!(matches!(r, Err(ProtocolError::Decode(_))));
            let r: Option<Frame> = read_frame(&mut [].as_slice()).await.unwrap();
            assert!(r.is_none());
            // A frame declared at the limit whose bytes never come is an error, read in
            // chunks, and a frame larger than one chunk still arrives whole.
            let mut short = (MAX_FRAME_BYTES as u32).to_be_bytes().to_vec();
            short.extend([1u8; 100]);
            let r: Result<Option<Frame>, _> = read_frame(&mut short.as_slice()).await;
            assert!(matches!(r, Err(ProtocolError::Io(_))), "{r:?}");
            let big = vec![7u8; 3 * READ_CHUNK + 5];
            let mut buf = Vec::new();
            write_frame(&mut buf, &big).await.unwrap();
            let back: Vec<u8> = read_frame(&mut buf.as_slice()).await.unwrap().unwrap();
            assert_eq!(back, big);
        });
    }
}
