//! The rate limit service's descriptor config as an operator's file gives it (YAML), and
//! a request's descriptor matched against it: refused with an error naming the file, or
//! valid, and then every match answers a limit whose bucket is what the file says; never
//! a panic.
//!
//! Input: the request's entries (`key=value` separated by `;`), a NUL byte, the file.

#![no_main]

use libfuzzer_sys::fuzz_target;
use limiter_rls::{apply_replaces, Allowance, Domain};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let (request, file) = text.split_once('\0').unwrap_or(("", text));
    let domain = match Domain::parse(file, "fuzz.yaml") {
        Ok(domain) => domain,
        Err(e) => {
            assert!(e.to_string().starts_with("fuzz.yaml: "), "{e}");
            return;
        }
    };
    let entries: Vec<(&str, &str)> = request
        .split(';')
        .filter(|e| !e.is_empty())
        .map(|e| e.split_once('=').unwrap_or((e, "")))
        .collect();
    // Every prefix of the request is a descriptor of its own.
    let mut limits: Vec<_> = (1..=entries.len())
        .map(|n| domain.find(entries[..n].iter().copied()))
        .collect();
    for limit in limits.iter().flatten() {
        let policy = limit.policy();
        match limit.allowance() {
            Allowance::Bucket {
                requests_per_unit,
                unit,
            } => {
                let quota = policy.quotas()[0];
                assert_eq!(quota.capacity(), u64::from(requests_per_unit));
                assert_eq!(quota.full_refill(), unit.period());
            }
            Allowance::Nothing { .. } | Allowance::Unlimited => assert!(policy.is_unlimited()),
        }
        assert!(limit.rule().name().len() <= 64);
    }
    apply_replaces(&mut limits);
});
