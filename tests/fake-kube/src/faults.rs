//! Faults on demand and access control: rules that answer matching requests with a 5xx,
//! a 429 with Retry-After, a delay or a dropped connection (each on a fraction of requests
//! and/or a limited number of times), and the deny list of (verb, resource) pairs that
//! both answers 403 and makes SelfSubjectAccessReview say "not allowed".

use std::time::Duration;

/// What a matching fault rule does to a request.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultAction {
    /// Answer this HTTP status (500, 503...) with a `Status` body.
    Error(u16),
    /// Answer 429 Too Many Requests with `Retry-After: secs`.
    TooManyRequests { retry_after_secs: u64 },
    /// Wait this long, then serve the request normally.
    Delay(Duration),
    /// Send the response headers, then break the connection before the body.
    DropConnection,
    /// Answer this HTTP status with a `Status` of this reason and message, e.g. an
    /// admission webhook without dry-run support: 400 `BadRequest`
    /// "admission webhook \"x\" does not support dry run" (match `dryRun=All` with
    /// `path_contains`).
    Status {
        code: u16,
        reason: &'static str,
        message: String,
    },
}

/// A fault rule: which requests, how often, what happens.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    pub action: FaultAction,
    /// HTTP method to match (`PATCH`); any when `None`.
    pub method: Option<String>,
    /// A substring of the path and query to match (`/deployments`); any when `None`.
    pub path_contains: Option<String>,
    /// Probability a matching request is hit, 0.0..=1.0 (seeded, reproducible).
    pub fraction: f64,
    /// How many more requests it may hit; unlimited when `None`.
    pub remaining: Option<u32>,
}

impl FaultRule {
    /// A rule that hits every request until narrowed.
    pub fn new(action: FaultAction) -> Self {
        FaultRule {
            action,
            method: None,
            path_contains: None,
            fraction: 1.0,
            remaining: None,
        }
    }
    pub fn method(mut self, m: &str) -> Self {
        self.method = Some(m.to_ascii_uppercase());
        self
    }
    pub fn path_contains(mut self, s: &str) -> Self {
        self.path_contains = Some(s.to_string());
        self
    }
    pub fn fraction(mut self, f: f64) -> Self {
        self.fraction = f.clamp(0.0, 1.0);
        self
    }
    pub fn times(mut self, n: u32) -> Self {
        self.remaining = Some(n);
        self
    }
}

/// The active fault rules and a deterministic random source for fractions.
#[derive(Debug, Clone)]
pub struct Faults {
    rules: Vec<FaultRule>,
    rng: u64,
    /// How many requests a fault was injected into so far.
    pub injected: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            rules: Vec::new(),
            rng: 0x9E37_79B9_7F4A_7C15,
            injected: 0,
        }
    }
}

impl Faults {
    pub fn add(&mut self, rule: FaultRule) {
        self.rules.push(rule);
    }
    pub fn clear(&mut self) {
        self.rules.clear();
    }
    pub fn seed(&mut self, seed: u64) {
        self.rng = seed | 1;
    }

    fn next_f64(&mut self) -> f64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The action of the first rule that hits this request, if any.
    pub fn check(&mut self, method: &str, path_and_query: &str) -> Option<FaultAction> {
        for i in 0..self.rules.len() {
            let r = &self.rules[i];
            if r.method.as_deref().is_some_and(|m| m != method)
                || r.path_contains
                    .as_deref()
                    .is_some_and(|p| !path_and_query.contains(p))
                || r.remaining == Some(0)
            {
                continue;
            }
            let fraction = r.fraction;
            if fraction < 1.0 && self.next_f64() >= fraction {
                continue;
            }
            let r = &mut self.rules[i];
            if let Some(n) = r.remaining.as_mut() {
                *n -= 1;
            }
            self.injected += 1;
            return Some(r.action.clone());
        }
        None
    }
}

/// Denied (verb, resource, namespace) triples; everything else is allowed.
#[derive(Debug, Clone, Default)]
pub struct Access {
    denied: Vec<(String, String, Option<String>)>,
}

impl Access {
    /// Denies `verb` on `resource` (`pods/exec`, `deployments`, or `*` for any), in one
    /// namespace or (None) everywhere.
    pub fn deny(&mut self, verb: &str, resource: &str, namespace: Option<&str>) {
        self.denied
            .push((verb.into(), resource.into(), namespace.map(Into::into)));
    }
    pub fn allow_all(&mut self) {
        self.denied.clear();
    }
    pub fn allowed(&self, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
        !self.denied.iter().any(|(v, r, ns)| {
            (v == verb || v == "*")
                && (r == resource || r == "*")
                && (ns.is_none() || ns.as_deref() == namespace)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fraction_and_times() {
        let mut f = Faults::default();
        f.add(
            FaultRule::new(FaultAction::Error(500))
                .fraction(0.5)
                .path_contains("/pods"),
        );
        let hits = (0..1000)
            .filter(|_| f.check("GET", "/api/v1/pods").is_some())
            .count();
        assert!((350..650).contains(&hits), "{hits}");
        assert!(f.check("GET", "/api/v1/configmaps").is_none());
        let mut f = Faults::default();
        f.add(
            FaultRule::new(FaultAction::Error(503))
                .times(2)
                .method("get"),
        );
        assert!(f.check("GET", "/x").is_some());
        assert!(f.check("POST", "/x").is_none());
        assert!(f.check("GET", "/x").is_some());
        assert!(f.check("GET", "/x").is_none());
    }

    #[test]
    fn deny_list() {
        let mut a = Access::default();
        a.deny("create", "pods/exec", Some("prod"));
        assert!(!a.allowed("create", "pods/exec", Some("prod")));
        assert!(a.allowed("create", "pods/exec", Some("dev")));
        assert!(a.allowed("get", "pods/exec", Some("prod")));
    }
}
