//! The simulated network between clients and nodes: loss, duplication, delay (hence
//! reordering) and partitions, all drawn from the seed.

use std::sync::Arc;
use std::time::Duration;

use tessera_shell::driver::DriverHandle;

use crate::run::World;

/// How long a client waits for an answer before it gives up on the call.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(400);

#[derive(Debug)]
pub enum Outcome<O> {
    Reply(O),
    /// No answer: lost, timed out, or the node died. The request may or may not have
    /// taken effect, now or later (a delayed copy may still arrive).
    Unknown,
}

async fn delay(world: &World) {
    let ms = world.rng_below(world.plan.max_delay_ms + 1);
    madsim::time::sleep(Duration::from_millis(ms)).await;
}

/// Which driver of a node a request is for.
pub type Pick<I, O> = fn(&World, usize) -> Option<DriverHandle<I, O>>;

/// Delivers one request to a node's driver, if the network lets it through.
async fn deliver<I, O>(world: &Arc<World>, client: usize, node: usize, pick: Pick<I, O>, req: I) -> Outcome<O> {
    delay(world).await;
    if world.cut(client, node) || world.chance(world.plan.loss) {
        return Outcome::Unknown;
    }
    let Some(handle) = pick(world, node) else { return Outcome::Unknown };
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

pub async fn call<I, O>(world: &Arc<World>, client: usize, node: usize, pick: Pick<I, O>, req: I) -> Outcome<O>
where
    I: Clone + std::fmt::Debug + Send + 'static,
    O: std::fmt::Debug + Send + 'static,
{
    call_traced(world, client, node, pick, req).await.0
}

/// [`call`], also saying whether the network sent a second copy of the request, which may
/// take effect at any later time (the checker must allow for it).
pub async fn call_traced<I, O>(
    world: &Arc<World>,
    client: usize,
    node: usize,
    pick: Pick<I, O>,
    req: I,
) -> (Outcome<O>, bool)
where
    I: Clone + std::fmt::Debug + Send + 'static,
    O: std::fmt::Debug + Send + 'static,
{
    let duplicated = world.chance(world.plan.duplicate);
    if duplicated {
        let (w, r) = (world.clone(), req.clone());
        madsim::task::spawn(async move {
            let desc = format!("{r:?}");
            let out = deliver(&w, client, node, pick, r).await;
            let shown = match &out {
                Outcome::Reply(o) => format!("{o:?}"),
                Outcome::Unknown => "no answer".into(),
            };
            w.event(format!(
                "c{client}->n{node} duplicate {} => {}",
                crate::model::clip(&desc),
                crate::model::clip(&shown)
            ));
        });
    }
    let started = world.elapsed_ms();
    let out = deliver(world, client, node, pick, req).await;
    if matches!(out, Outcome::Unknown) {
        // A client only learns of a lost message by waiting out its timeout.
        let waited = world.elapsed_ms().saturating_sub(started);
        let rest = (REQUEST_TIMEOUT.as_millis() as u64).saturating_sub(waited);
        madsim::time::sleep(Duration::from_millis(rest)).await;
    }
    (out, duplicated)
}
