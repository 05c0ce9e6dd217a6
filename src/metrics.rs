//! Metric names, declared once with their help text, and the Prometheus recorder.
//! Labels are bounded: route templates, kinds, statuses, topics and partitions — never
//! raw paths or ids.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// HTTP requests by `route` (template), `method` and `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "touchline_http_requests_total";
/// HTTP request latency by `route`.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "touchline_http_request_duration_seconds";
/// Redirects answered, by click `status` (ok, paused, banned) and `bot` (true, false).
pub const EDGE_CLICKS_TOTAL: &str = "touchline_edge_clicks_total";
/// Click events dropped because the buffer in front of the broker was full.
pub const EDGE_CLICK_BUFFER_OVERFLOW_TOTAL: &str = "touchline_edge_click_buffer_overflow_total";
/// `api_audit` rows lost because the buffer in front of the audit log was full.
pub const EDGE_AUDIT_DROPPED_TOTAL: &str = "touchline_edge_audit_dropped_total";
/// Keyed API requests refused by the access layer, by `reason` (unauthorized,
/// forbidden, rate_limited, not_found).
pub const EDGE_ACCESS_REFUSED_TOTAL: &str = "touchline_edge_access_refused_total";
/// Click fields stored shorter than sent, by `field` (user_agent, referer, utm_*).
pub const EDGE_TRUNCATED_FIELDS_TOTAL: &str = "touchline_edge_truncated_fields_total";
/// Click events the broker finally refused (not retryable).
pub const EDGE_CLICK_DELIVERY_ERRORS_TOTAL: &str = "touchline_edge_click_delivery_errors_total";
/// Click events delivered to the broker.
pub const EDGE_CLICKS_DELIVERED_TOTAL: &str = "touchline_edge_clicks_delivered_total";
/// Click events waiting for the broker.
pub const EDGE_CLICK_BUFFERED: &str = "touchline_edge_click_buffered";
/// Conversions accepted (acknowledged by the broker), by `kind`.
pub const EDGE_CONVERSIONS_ACCEPTED_TOTAL: &str = "touchline_edge_conversions_accepted_total";
/// Conversion requests refused, by `reason`.
pub const EDGE_CONVERSIONS_REJECTED_TOTAL: &str = "touchline_edge_conversions_rejected_total";
/// Stripe webhook deliveries, by `type` (the mapped ones, else `other`) and `outcome`
/// (booked, refused, or why nothing was booked).
pub const EDGE_STRIPE_EVENTS_TOTAL: &str = "touchline_edge_stripe_events_total";
/// Registry changes applied from the change log.
pub const REGISTRY_CHANGES_TOTAL: &str = "touchline_registry_changes_applied_total";
/// Failed registry refreshes.
pub const REGISTRY_REFRESH_ERRORS_TOTAL: &str = "touchline_registry_refresh_errors_total";
/// Messages consumed by the pipeline, by `topic` and `result` (ok, dlq).
pub const PIPELINE_MESSAGES_TOTAL: &str = "touchline_pipeline_messages_total";
/// Click dedup verdicts, by `result` (unique, duplicate, bot, inactive).
pub const PIPELINE_CLICK_DEDUP_TOTAL: &str = "touchline_pipeline_click_dedup_total";
/// Conversions settled, by `kind` and `status`.
pub const PIPELINE_CONVERSIONS_TOTAL: &str = "touchline_pipeline_conversions_total";
/// Attributed conversions by attribution `model`.
pub const PIPELINE_ATTRIBUTIONS_TOTAL: &str = "touchline_pipeline_attributions_total";
/// Commission booked, in minor units of `currency`, by ledger `kind`; money as integers.
pub const PIPELINE_COMMISSION_MINOR_UNITS_TOTAL: &str =
    "touchline_pipeline_commission_minor_units_total";
/// Conversions waiting for a late click, sale or order.
pub const PIPELINE_PENDING: &str = "touchline_pipeline_pending_conversions";
/// Conversions settled before the partitions' frontiers released them.
pub const PIPELINE_FORCED_SETTLEMENTS_TOTAL: &str = "touchline_pipeline_forced_settlements_total";
pub const PIPELINE_TIER_MOVES_TOTAL: &str = "touchline_pipeline_tier_moves_total";
/// Fraud flags raised, by `rule` (SPEC §5.8).
pub const PIPELINE_FRAUD_FLAGS_TOTAL: &str = "touchline_pipeline_fraud_flags_total";
/// Lifecycle steps of ledger rows recorded by the pipeline, by `status`.
pub const PIPELINE_LIFECYCLE_STEPS_TOTAL: &str = "touchline_pipeline_lifecycle_steps_total";
/// Review and payout steps recorded by the admin API, by `status`.
pub const EDGE_LIFECYCLE_STEPS_TOTAL: &str = "touchline_edge_lifecycle_steps_total";
/// Candidate clicks waiting for the click partitions' frontiers.
pub const PIPELINE_PENDING_CLICKS: &str = "touchline_pipeline_pending_clicks";
/// Messages per processed batch.
pub const PIPELINE_BATCH_MESSAGES: &str = "touchline_pipeline_batch_messages";
/// Consumer lag in messages, by `topic` and `partition`.
pub const PIPELINE_CONSUMER_LAG: &str = "touchline_pipeline_consumer_lag_messages";
/// Offset commits.
pub const PIPELINE_COMMITS_TOTAL: &str = "touchline_pipeline_commits_total";
/// Retries of a failing dependency, by `dependency` (clickhouse, redis, kafka).
pub const PIPELINE_RETRIES_TOTAL: &str = "touchline_pipeline_retries_total";
/// Rebalances that waited while the pipeline wrote and committed what it had settled
/// of the partitions they took.
pub const PIPELINE_REVOCATIONS_DRAINED_TOTAL: &str = "touchline_pipeline_revocations_drained_total";
/// Rows written by the sink, by `table`.
pub const SINK_ROWS_TOTAL: &str = "touchline_sink_rows_total";
/// Duration of one sink write, by `table`.
pub const SINK_INSERT_DURATION_SECONDS: &str = "touchline_sink_insert_duration_seconds";
/// Outbox events taken by webhook delivery, by `result` (parked, known, unsubscribed,
/// unreadable).
pub const WEBHOOK_EVENTS_TOTAL: &str = "touchline_webhooks_events_total";
/// Outbox offset commits of webhook delivery.
pub const WEBHOOK_COMMITS_TOTAL: &str = "touchline_webhooks_commits_total";
/// Delivery attempts recorded, by `outcome` (acknowledged, failed, given_up).
pub const WEBHOOK_ATTEMPTS_TOTAL: &str = "touchline_webhooks_attempts_total";
/// Failed delivery attempts, by `reason` (status, timeout, connect, io, request).
pub const WEBHOOK_FAILURES_TOTAL: &str = "touchline_webhooks_failures_total";
/// Duration of one delivery request.
pub const WEBHOOK_REQUEST_DURATION_SECONDS: &str = "touchline_webhooks_request_duration_seconds";
/// Age of the oldest event not yet acknowledged or given up.
pub const WEBHOOK_OLDEST_UNDELIVERED_SECONDS: &str =
    "touchline_webhooks_oldest_undelivered_seconds";
/// (endpoint, partner) queues holding events.
pub const WEBHOOK_QUEUES: &str = "touchline_webhooks_queues";
/// Endpoints whose circuit breaker is open in this process.
pub const WEBHOOK_OPEN_CIRCUITS: &str = "touchline_webhooks_open_circuits";

/// Every metric with its kind and help text, for `describe_*` and the README.
pub const ALL: &[(&str, &str, &str)] = &[
    (
        HTTP_REQUESTS_TOTAL,
        "counter",
        "HTTP requests by route template, method and status.",
    ),
    (
        HTTP_REQUEST_DURATION_SECONDS,
        "histogram",
        "HTTP request latency by route template.",
    ),
    (
        EDGE_CLICKS_TOTAL,
        "counter",
        "Redirects answered, by click status and bot flag.",
    ),
    (
        EDGE_CLICK_BUFFER_OVERFLOW_TOTAL,
        "counter",
        "Click events dropped because the broker buffer was full.",
    ),
    (
        EDGE_CLICK_DELIVERY_ERRORS_TOTAL,
        "counter",
        "Click events the broker refused for good.",
    ),
    (
        EDGE_CLICKS_DELIVERED_TOTAL,
        "counter",
        "Click events acknowledged by the broker.",
    ),
    (
        EDGE_CLICK_BUFFERED,
        "gauge",
        "Click events waiting for the broker.",
    ),
    (
        EDGE_CONVERSIONS_ACCEPTED_TOTAL,
        "counter",
        "Conversions acknowledged by the broker, by kind.",
    ),
    (
        EDGE_CONVERSIONS_REJECTED_TOTAL,
        "counter",
        "Conversion requests refused, by reason.",
    ),
    (
        EDGE_STRIPE_EVENTS_TOTAL,
        "counter",
        "Stripe webhook deliveries, by type and outcome (booked, refused, or why nothing was booked).",
    ),
    (
        EDGE_AUDIT_DROPPED_TOTAL,
        "counter",
        "api_audit rows lost because the audit buffer was full.",
    ),
    (
        EDGE_ACCESS_REFUSED_TOTAL,
        "counter",
        "Keyed API requests the access layer refused, by reason.",
    ),
    (
        EDGE_TRUNCATED_FIELDS_TOTAL,
        "counter",
        "Click fields stored truncated to the edge's limits (the redirect carries them whole), by field.",
    ),
    (
        REGISTRY_CHANGES_TOTAL,
        "counter",
        "Registry changes applied from the change log.",
    ),
    (
        REGISTRY_REFRESH_ERRORS_TOTAL,
        "counter",
        "Failed registry refreshes.",
    ),
    (
        PIPELINE_MESSAGES_TOTAL,
        "counter",
        "Messages consumed, by topic and result.",
    ),
    (
        PIPELINE_CLICK_DEDUP_TOTAL,
        "counter",
        "Click dedup verdicts.",
    ),
    (
        PIPELINE_CONVERSIONS_TOTAL,
        "counter",
        "Conversions settled, by kind and status.",
    ),
    (
        PIPELINE_ATTRIBUTIONS_TOTAL,
        "counter",
        "Attributed conversions by attribution model.",
    ),
    (
        PIPELINE_COMMISSION_MINOR_UNITS_TOTAL,
        "counter",
        "Commission booked in minor units, by currency and ledger kind.",
    ),
    (
        PIPELINE_PENDING,
        "gauge",
        "Conversions waiting for every partition's frontier to pass them.",
    ),
    (
        PIPELINE_PENDING_CLICKS,
        "gauge",
        "Candidate clicks waiting for every click partition's frontier to pass them.",
    ),
    (
        PIPELINE_FORCED_SETTLEMENTS_TOTAL,
        "counter",
        "Conversions settled before every partition released them (a partition stayed behind past pipeline.max_wait_secs, or pipeline.max_pending was reached).",
    ),
    (
        PIPELINE_TIER_MOVES_TOTAL,
        "counter",
        "Automatic tier moves made at period boundaries (SPEC §10.2), counted by every instance that makes them.",
    ),
    (
        PIPELINE_FRAUD_FLAGS_TOTAL,
        "counter",
        "Fraud flags raised, by rule (click_spam, fast_conversion, self_referral, review_above, refund_rate); flagged commissions are held.",
    ),
    (
        PIPELINE_LIFECYCLE_STEPS_TOTAL,
        "counter",
        "Lifecycle steps of ledger rows recorded by the pipeline (creation, approval at the end of the hold, cancellation by a refund), by status.",
    ),
    (
        EDGE_LIFECYCLE_STEPS_TOTAL,
        "counter",
        "Review and payout steps of ledger rows recorded by the admin API, by status.",
    ),
    (
        PIPELINE_BATCH_MESSAGES,
        "histogram",
        "Messages per processed batch.",
    ),
    (
        PIPELINE_CONSUMER_LAG,
        "gauge",
        "Consumer lag in messages, by topic and partition.",
    ),
    (
        PIPELINE_COMMITS_TOTAL,
        "counter",
        "Offset commits after durable writes.",
    ),
    (
        PIPELINE_RETRIES_TOTAL,
        "counter",
        "Retries of a failing dependency.",
    ),
    (
        PIPELINE_REVOCATIONS_DRAINED_TOTAL,
        "counter",
        "Rebalances that waited for the pipeline to write and commit what it settled.",
    ),
    (SINK_ROWS_TOTAL, "counter", "Rows written, by table."),
    (
        WEBHOOK_EVENTS_TOTAL,
        "counter",
        "Outbox events taken by webhook delivery, by result (parked per endpoint, known from before, unsubscribed, unreadable).",
    ),
    (
        WEBHOOK_COMMITS_TOTAL,
        "counter",
        "Outbox offset commits after events were parked.",
    ),
    (
        WEBHOOK_ATTEMPTS_TOTAL,
        "counter",
        "Webhook delivery attempts recorded in webhook_deliveries, by outcome.",
    ),
    (
        WEBHOOK_FAILURES_TOTAL,
        "counter",
        "Failed webhook delivery attempts, by reason (status, timeout, connect, io, request).",
    ),
    (
        WEBHOOK_REQUEST_DURATION_SECONDS,
        "histogram",
        "Duration of one webhook delivery request.",
    ),
    (
        WEBHOOK_OLDEST_UNDELIVERED_SECONDS,
        "gauge",
        "Age of the oldest webhook event neither acknowledged nor given up.",
    ),
    (
        WEBHOOK_QUEUES,
        "gauge",
        "Webhook queues (one per endpoint and partner) holding events.",
    ),
    (
        WEBHOOK_OPEN_CIRCUITS,
        "gauge",
        "Webhook endpoints whose circuit breaker is open in this process.",
    ),
    (
        SINK_INSERT_DURATION_SECONDS,
        "histogram",
        "Duration of one sink write, by table.",
    ),
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle. Later
/// calls (tests starting several servers in one process) share the same recorder.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(HTTP_REQUEST_DURATION_SECONDS.into()),
                    &latency,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(SINK_INSERT_DURATION_SECONDS.into()),
                        &latency,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(WEBHOOK_REQUEST_DURATION_SECONDS.into()),
                        &latency,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(PIPELINE_BATCH_MESSAGES.into()),
                        &[1.0, 10.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0],
                    )
                })
                .expect("bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding application);
            // then our handle renders nothing, which is better than failing to start.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            for (name, kind, help) in ALL {
                match *kind {
                    "counter" => metrics::describe_counter!(*name, *help),
                    "gauge" => metrics::describe_gauge!(*name, *help),
                    _ => metrics::describe_histogram!(*name, *help),
                }
            }
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        for (name, kind, help) in ALL {
            assert!(name.starts_with("touchline_"), "{name}");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            if *kind == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            } else {
                assert!(!name.ends_with("_total"), "{name}");
            }
            assert!(!help.is_empty());
        }
    }

    #[test]
    fn readme_lists_every_metric() {
        let readme = include_str!("../README.md");
        for (name, _, _) in ALL {
            assert!(readme.contains(name), "README does not list {name}");
        }
    }
}
