//! The simulated network between clients and nodes: loss, duplication, delay (hence
//! reordering) and partitions, all drawn from the seed.

use std::sync::Arc;
use std::time::Duration;

use tessera_core::CoreResult;
use tessera_core::status::{StatusRequest, StatusResponse};

use crate::run::World;

/// How long a client waits for an answer before it gives up on the call.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(400);

#[derive(Debug)]
pub enum Outcome {
    Reply(CoreResult<StatusResponse>),
    /// No answer: lost, timed out, or the node died. The request may or may not have
    /// taken effect, now or later (a delayed copy may still arrive).
    Unknown,
}

async fn delay(world: &World) {
    let ms = world.rng_below(world.plan.max_delay_ms + 1);
    madsim::time::sleep(Duration::from_millis(ms)).await;
}

/// Delivers one request to a node's driver, if the network lets it through.
async fn deliver(world: &Arc<World>, client: usize, node: usize, req: StatusRequest) -> Outcome {
    delay(world).await;
    if world.cut(client, node) || world.chance(world.plan.loss) {
        return Outcome::Unknown;
    }
    let Some(handle) = world.node_handle(node) else { return Outcome::Unknown };
    match madsim::time::timeout(REQUEST_TIMEOUT, handle.call(req)).await {
        Ok(Ok(reply)) => {
            delay(world).await;
            if world.cut(client, node) || world.chance(world.plan.loss) {
                Outcome::Unknown
            } else {
                Outcome::Reply(reply)
            }
        }
        _ => Outcome::Unknown,
    }
}

pub async fn call(world: &Arc<World>, client: usize, node: usize, req: StatusRequest) -> Outcome {
    if world.chance(world.plan.duplicate) {
        let (w, r) = (world.clone(), req.clone());
        madsim::task::spawn(async move {
            let out = deliver(&w, client, node, r.clone()).await;
            w.event(format!(
                "c{client}->n{node} duplicate {} => {}",
                crate::model::short_req(&r),
                crate::model::short_out(&out)
            ));
        });
    }
    let started = world.elapsed_ms();
    let out = deliver(world, client, node, req).await;
    if matches!(out, Outcome::Unknown) {
        // A client only learns of a lost message by waiting out its timeout.
        let waited = world.elapsed_ms().saturating_sub(started);
        let rest = (REQUEST_TIMEOUT.as_millis() as u64).saturating_sub(waited);
        madsim::time::sleep(Duration::from_millis(rest)).await;
    }
    out
}
