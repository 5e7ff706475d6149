//! Validation of the batch, discovery and policy kinds beyond the Job spec: CronJob schedules,
//! time zones, policies and history limits; EndpointSlice address types and endpoint counts;
//! PodDisruptionBudget budgets.

use serde_json::{Value, json};

use super::Cause;

/// Shared with the other per-group validators of this module.
pub(super) fn invalid(field: &str, value: &Value, message: &str, causes: &mut Vec<Cause>) {
    causes.push(Cause {
        reason: "FieldValueInvalid",
        field: field.into(),
        message: format!("Invalid value: {value}: {message}"),
    });
}

/// Shared with the other per-group validators of this module.
pub(super) fn required(field: &str, causes: &mut Vec<Cause>) {
    causes.push(Cause {
        reason: "FieldValueRequired",
        field: field.into(),
        message: "Required value".into(),
    });
}

/// Shared with the other per-group validators of this module.
pub(super) fn not_supported(
    field: &str,
    value: &Value,
    supported: &[&str],
    causes: &mut Vec<Cause>,
) {
    let list: Vec<String> = supported.iter().map(|s| json!(s).to_string()).collect();
    causes.push(Cause {
        reason: "FieldValueNotSupported",
        field: field.into(),
        message: format!(
            "Unsupported value: {value}: supported values: {}",
            list.join(", ")
        ),
    });
}

/// The CronJob-level fields (the job template is checked as a Job spec by the caller).
pub fn cronjob(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    match spec["schedule"].as_str() {
        None | Some("") => required("spec.schedule", causes),
        Some(text) => {
            if text.trim_start().starts_with("TZ=") || text.contains("CRON_TZ=") {
                let msg = "cannot use TZ or CRON_TZ in schedule, use timeZone field instead";
                invalid("spec.schedule", &spec["schedule"], msg, causes);
            } else if let Err(e) = crate::cron::Schedule::parse(text) {
                invalid("spec.schedule", &spec["schedule"], &e.to_string(), causes);
            }
        }
    }
    if !spec["timeZone"].is_null() {
        let zone = spec["timeZone"].as_str();
        if zone.is_none() || crate::cron::time_zone(zone).is_err() {
            let msg = format!("unknown time zone {}", zone.unwrap_or(""));
            invalid("spec.timeZone", &spec["timeZone"], &msg, causes);
        }
    }
    let policy = &spec["concurrencyPolicy"];
    if !matches!(policy.as_str(), Some("Allow" | "Forbid" | "Replace")) {
        let supported = ["Allow", "Forbid", "Replace"];
        not_supported("spec.concurrencyPolicy", policy, &supported, causes);
    }
    for field in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        if spec[field].as_i64().is_some_and(|v| v < 0) {
            let msg = "must be greater than or equal to 0";
            invalid(&format!("spec.{field}"), &spec[field], msg, causes);
        }
    }
}

/// An EndpointSlice: a known address type and at most 1000 endpoints, each with 1 address.
pub fn endpoint_slice(obj: &Value, causes: &mut Vec<Cause>) {
    let kind = &obj["addressType"];
    if kind.is_null() {
        required("addressType", causes);
    } else if !matches!(kind.as_str(), Some("IPv4" | "IPv6" | "FQDN")) {
        not_supported("addressType", kind, &["IPv4", "IPv6", "FQDN"], causes);
    }
    let endpoints = obj["endpoints"].as_array().cloned().unwrap_or_default();
    if endpoints.len() > 1000 {
        causes.push(Cause {
            reason: "FieldValueTooMany",
            field: "endpoints".into(),
            message: format!(
                "Too many: {}: must have at most 1000 items",
                endpoints.len()
            ),
        });
    }
    for (i, e) in endpoints.iter().enumerate() {
        let n = e["addresses"].as_array().map_or(0, Vec::len);
        if n == 0 {
            required(&format!("endpoints[{i}].addresses"), causes);
        } else if n > 100 {
            let field = format!("endpoints[{i}].addresses");
            let msg = "must have at most 100 items";
            invalid(&field, &json!(n), msg, causes);
        }
    }
}

/// A PodDisruptionBudget: at most one of minAvailable and maxUnavailable, each a non-negative
/// number or a percentage of at most 100%.
pub fn pod_disruption_budget(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    if !spec["minAvailable"].is_null() && !spec["maxUnavailable"].is_null() {
        let msg = "minAvailable and maxUnavailable cannot be both set";
        invalid("spec", spec, msg, causes);
    }
    for field in ["minAvailable", "maxUnavailable"] {
        let value = &spec[field];
        let ok = match value {
            Value::Null => true,
            Value::Number(n) => n.as_i64().is_some_and(|n| n >= 0),
            Value::String(text) => text
                .strip_suffix('%')
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| p <= 100),
            _ => false,
        };
        if !ok {
            let msg = "must be a non-negative integer or a percentage between 0% and 100%";
            invalid(&format!("spec.{field}"), value, msg, causes);
        }
    }
}
