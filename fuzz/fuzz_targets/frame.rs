//! Wire frames as the agent and the controller read them from the connection: a stream of
//! length-prefixed, versioned postcard frames (proto/src/frame.rs).
//!
//! Properties: reading never panics and never allocates more than the frame limit; every
//! frame that decodes re-encodes to a frame that decodes to the same message.
#![no_main]

use jitgate_proto::frame::{self, FrameError};
use jitgate_proto::{AgentMsg, ControllerMsg, MAX_FRAME, read_frame};
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};
use std::fmt::Debug;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Runs a future that never waits (reading from a slice is always ready).
fn ready<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("reading from a slice waited"),
    }
}

fn read_all<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    let mut r = data;
    loop {
        let before = r.len();
        match ready(read_frame::<_, T>(&mut r)) {
            Ok(None) => break,
            Ok(Some(msg)) => {
                let read = before - r.len();
                assert!(read <= MAX_FRAME + 4);
                let again = frame::encode(&msg).expect("a decoded message re-encodes");
                let back: T = frame::decode(&again[4..]).expect("a re-encoded frame decodes");
                // Not byte equality: the bytes read need not be canonical (postcard accepts
                // over-long varints, and a source prefix may arrive as a bare address).
                assert_eq!(back, msg);
            }
            Err(FrameError::TooLarge(n)) => {
                assert!(n > MAX_FRAME);
                break;
            }
            Err(_) => break,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    read_all::<ControllerMsg>(data);
    read_all::<AgentMsg>(data);
});
