//! Keeps the local session cache (`cache.rs`) subscribed to the invalidation channel, and
//! turns it off whenever it is not.
//!
//! One pub/sub connection to the standalone Redis. Every message is a user id whose sessions
//! changed (one ended, all did, one was evicted): that user's entries are dropped. The
//! connection is pinged every [`HEARTBEAT`]; a ping unanswered within the Redis timeout, a
//! dropped connection or a failed subscribe turns the cache off (and empties it) until a new
//! subscription is confirmed, so a Redis that hangs or restarts never leaves stale entries
//! trusted. While it is off every request asks Redis, exactly as without a cache.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use uuid::Uuid;

use super::cache::SessionCache;
use crate::telemetry::Metrics;

/// How often the subscription proves it is alive.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// After a failed subscription, how long before the next try.
const RETRY: Duration = Duration::from_millis(250);

/// Runs forever (on the background runtime).
pub async fn keep_subscribed(
    client: redis::Client,
    channel: String,
    cache: Arc<SessionCache>,
    timeout: Duration,
    metrics: Arc<Metrics>,
) {
    let mut was_up = false;
    loop {
        let outcome = subscribe(&client, &channel, &cache, timeout, &metrics, &mut was_up).await;
        cache.set_enabled(false);
        metrics.session_cache_enabled(false);
        if was_up {
            tracing::warn!(error = %outcome, "session cache off: its invalidation channel dropped");
            was_up = false;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Subscribes and serves messages until the subscription fails; returns why.
async fn subscribe(
    client: &redis::Client,
    channel: &str,
    cache: &SessionCache,
    timeout: Duration,
    metrics: &Metrics,
    was_up: &mut bool,
) -> String {
    let pubsub = match tokio::time::timeout(timeout, client.get_async_pubsub()).await {
        Ok(Ok(pubsub)) => pubsub,
        Ok(Err(error)) => return error.to_string(),
        Err(_) => return "connect timed out".to_string(),
    };
    let (mut sink, mut messages) = pubsub.split();
    match tokio::time::timeout(timeout, sink.subscribe(channel)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return error.to_string(),
        Err(_) => return "subscribe timed out".to_string(),
    }
    cache.set_enabled(true);
    metrics.session_cache_enabled(true);
    if !*was_up {
        tracing::info!("session cache on: subscribed to its invalidation channel");
    }
    *was_up = true;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else {
                    return "connection closed".to_string();
                };
                match std::str::from_utf8(message.get_payload_bytes())
                    .ok()
                    .and_then(|text| text.parse::<Uuid>().ok())
                {
                    Some(user_id) => cache.invalidate_user(user_id),
                    // Not ours to understand: be safe.
                    None => cache.set_enabled(true),
                }
            }
            _ = heartbeat.tick() => {
                match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => return error.to_string(),
                    Err(_) => return "heartbeat timed out".to_string(),
                }
            }
        }
    }
}
