//! Ordered, coalesced calls from a SocketHub to Channel Durable Objects.
//!
//! Each channel has one queue. The first caller to find the queue idle becomes its flusher: it
//! sends everything queued as one request, then whatever arrived meanwhile, until the queue is
//! empty. So a channel gets one request at a time from this hub (order is kept), and messages that
//! arrive while a request is in flight ride together in the next one (coalescing, no added wait).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use futures_channel::oneshot;
use sluice_shared::internal::{ChannelOp, ChannelRequest, ChannelResponse};
use worker::*;

use crate::rpc;

type Reply = oneshot::Sender<Option<Rc<ChannelResponse>>>;

#[derive(Default)]
struct Queue {
    pending: Vec<(Vec<ChannelOp>, Reply)>,
    busy: bool,
}

#[derive(Default)]
pub struct Outbox {
    queues: RefCell<HashMap<String, Queue>>,
}

impl Outbox {
    /// Queues `ops` for the channel DO `channel` (topic `topic`) and resolves with the response of
    /// the request that carried them (`None` if that request failed).
    pub async fn send(
        &self,
        stub: impl Fn() -> Result<Stub>,
        channel: &str,
        hub: &str,
        topic: &str,
        ops: Vec<ChannelOp>,
    ) -> Option<Rc<ChannelResponse>> {
        let (tx, rx) = oneshot::channel();
        let flusher = {
            let mut queues = self.queues.borrow_mut();
            let queue = queues.entry(channel.to_string()).or_default();
            queue.pending.push((ops, tx));
            !std::mem::replace(&mut queue.busy, true)
        };
        if flusher {
            loop {
                let batch = {
                    let mut queues = self.queues.borrow_mut();
                    let queue = queues.get_mut(channel).expect("queue exists while busy");
                    if queue.pending.is_empty() {
                        queue.busy = false;
                        break;
                    }
                    std::mem::take(&mut queue.pending)
                };
                let (ops, replies): (Vec<Vec<_>>, Vec<_>) = batch.into_iter().unzip();
                let ops = ops.into_iter().flatten().collect();
                let request = ChannelRequest {
                    hub: hub.to_string(),
                    topic: topic.to_string(),
                    ops,
                };
                let response = match post(&stub, &request).await {
                    Ok(r) => Some(Rc::new(r)),
                    Err(e) => {
                        console_error!("ErrorOnRpcCall: {hub}: request to {channel} failed: {e}");
                        None
                    }
                };
                for reply in replies {
                    let _ = reply.send(response.clone());
                }
            }
        }
        rx.await.ok().flatten()
    }
}

/// One request to a Channel, outside any queue (the REST API's relays).
pub async fn post(stub: &impl Fn() -> Result<Stub>, request: &ChannelRequest) -> Result<ChannelResponse> {
    rpc::post_json(stub()?, "/internal/v1/channel", request)
        .await?
        .json()
        .await
}
