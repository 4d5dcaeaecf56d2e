//! Frames: `u32` big-endian length of what follows, then one version byte, then the postcard
//! encoding of one message. The length is checked against [`MAX_FRAME`] before the body is
//! read or allocated.

use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Protocol version carried in every frame.
pub const VERSION: u8 = 1;
/// Largest frame body accepted (version byte included).
pub const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown protocol version {0} (this side speaks {VERSION})")]
    Version(u8),
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("message too large to send ({0} bytes)")]
    Encode(String),
}

/// Encodes one message into a frame (header included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_allocvec(msg).map_err(|e| FrameError::Encode(e.to_string()))?;
    if body.len() + 1 > MAX_FRAME {
        return Err(FrameError::Encode(format!("{}", body.len() + 1)));
    }
    let mut out = Vec::with_capacity(body.len() + 5);
    out.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
    out.push(VERSION);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes one frame body (after the length): version byte and message.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (&v, rest) = body.split_first().ok_or(FrameError::Empty)?;
    if v != VERSION {
        return Err(FrameError::Version(v));
    }
    let (msg, extra) =
        postcard::take_from_bytes(rest).map_err(|e| FrameError::Decode(e.to_string()))?;
    if !extra.is_empty() {
        return Err(FrameError::Decode(format!(
            "{} trailing bytes",
            extra.len()
        )));
    }
    Ok(msg)
}

pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    let f = encode(msg)?;
    w.write_all(&f).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame. `Ok(None)` at a clean end of stream (between frames).
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    decode(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::AgentMsg;

    #[test]
    fn round_trip_and_rejections() {
        let m = AgentMsg::Pong { nonce: 7 };
        let f = encode(&m).unwrap();
        assert_eq!(decode::<AgentMsg>(&f[4..]).unwrap(), m);
        assert!(matches!(decode::<AgentMsg>(&[]), Err(FrameError::Empty)));
        assert!(matches!(
            decode::<AgentMsg>(&[9, 0]),
            Err(FrameError::Version(9))
        ));
        assert!(matches!(
            decode::<AgentMsg>(&[VERSION, 0xff, 0xff]),
            Err(FrameError::Decode(_))
        ));
        let mut trailing = f[4..].to_vec();
        trailing.push(0);
        assert!(matches!(
            decode::<AgentMsg>(&trailing),
            Err(FrameError::Decode(_))
        ));
    }

    /// Messages are only ever appended to their enum, so an older peer's messages keep
    /// their encoding (docs/protocol.md "Versioning"): pinned here byte for byte.
    #[test]
    fn existing_messages_keep_their_encoding() {
        // len 3, version 1, variant 7 (Pong), nonce 7.
        assert_eq!(
            encode(&AgentMsg::Pong { nonce: 7 }).unwrap(),
            [0, 0, 0, 3, 1, 7, 7]
        );
        let status = AgentMsg::Status(Box::new(crate::message::StatusReport {
            heartbeat: crate::message::Heartbeat {
                interfaces: vec![],
                protected: vec![],
                listening: vec![],
                active_grants: 0,
                audit_head: String::new(),
                audit_seq: 0,
            },
            addresses: vec![("eth0".into(), "198.51.100.10".into())],
            problems: vec![],
            agent_unix_ms: 1,
        }));
        let f = encode(&status).unwrap();
        assert_eq!(f[5], 8, "Status is appended after Pong");
        assert_eq!(decode::<AgentMsg>(&f[4..]).unwrap(), status);
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_allocating() {
        let mut data: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1];
        assert!(matches!(
            read_frame::<_, AgentMsg>(&mut data).await,
            Err(FrameError::TooLarge(_))
        ));
        let mut empty: &[u8] = &[];
        assert!(
            read_frame::<_, AgentMsg>(&mut empty)
                .await
                .unwrap()
                .is_none()
        );
        let mut torn: &[u8] = &[0, 0, 0, 10, 1, 2];
        assert!(matches!(
            read_frame::<_, AgentMsg>(&mut torn).await,
            Err(FrameError::Io(_))
        ));
    }
}
