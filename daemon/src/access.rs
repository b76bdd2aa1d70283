//! Local security settings: who may publish to or subscribe to which group (the
//! `[[access]]` lists), the control socket's mode and group, and the `[limits]` that bound
//! what one user or one client can make the daemon hold. The control thread checks them at
//! attach and at join; see `docs/security.md` ("Local").

use serde::Deserialize;
use tutti_wire::control::{Right, Rights, MAX_GROUP_NAME};

/// One `[[access]]` entry of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// A group name, or a prefix pattern ending in `*` (`"orders.*"`; `"*"`: every group).
    pub group: String,
    /// Who may publish: `"uid:1000"`, `"user:alice"`, `"gid:100"`, `"group:ops"` (the
    /// `uid:`/`gid:` forms take a name too), or `"*"` for anyone who may attach.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Who may subscribe, in the same forms.
    #[serde(default)]
    pub subscribe: Vec<String>,
}

/// The `[limits]` table: per-user and per-client bounds on what the daemon holds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most clients attached at once by one uid (connections not yet past `Hello` count).
    pub clients_per_uid: usize,
    /// Most bytes of shared memory one uid makes the daemon hold: its clients' publish
    /// rings, plus the delivery logs of the groups it created (charged until the group is
    /// freed).
    pub ring_bytes_per_uid: u64,
    /// Joins one client may make per second, on average (a token bucket)...
    pub joins_per_second: u32,
    /// ...and in a burst (the bucket's size).
    pub join_burst: u32,
    /// Most groups one client belongs to at once.
    pub groups_per_client: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            clients_per_uid: 256,
            ring_bytes_per_uid: 4 << 30,
            joins_per_second: 100,
            join_burst: 200,
            groups_per_client: 1024,
        }
    }
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("limits.clients_per_uid", self.clients_per_uid as u64),
            ("limits.ring_bytes_per_uid", self.ring_bytes_per_uid),
            ("limits.joins_per_second", u64::from(self.joins_per_second)),
            ("limits.join_burst", u64::from(self.join_burst)),
            ("limits.groups_per_client", self.groups_per_client as u64),
        ] {
            if value == 0 {
                return Err(format!("{key} = 0: must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Parses `socket_mode` ("0660", octal permission bits).
pub fn parse_socket_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|&m| m <= 0o777)
        .ok_or_else(|| format!("socket_mode = {text:?}: expected octal permission bits such as \"0660\""))
}

/// Resolves `socket_group` (a group name or a number) to a gid.
pub fn resolve_group(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .or_else(|| tutti_sys::gid_by_name(text))
        .ok_or_else(|| format!("group {text:?} is not in the group database"))
}

fn resolve_user(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .or_else(|| tutti_sys::uid_by_name(text))
        .ok_or_else(|| format!("user {text:?} is not in the user database"))
}

/// Who a list entry names, resolved to numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Principal {
    Anyone,
    Uid(u32),
    Gid(u32),
}

fn parse_principal(text: &str) -> Result<Principal, String> {
    if text == "*" {
        return Ok(Principal::Anyone);
    }
    match text.split_once(':') {
        Some(("uid" | "user", who)) => resolve_user(who).map(Principal::Uid),
        Some(("gid" | "group", who)) => resolve_group(who).map(Principal::Gid),
        _ => Err(format!(
            "{text:?}: expected \"uid:N\", \"user:NAME\", \"gid:N\", \"group:NAME\" or \"*\""
        )),
    }
}

/// Who a client is, as the kernel told us at connect time.
#[derive(Debug, Clone)]
pub struct Identity {
    pub uid: u32,
    /// Primary gid (SO_PEERCRED).
    pub gid: u32,
    /// Supplementary groups (SO_PEERGROUPS); None when the kernel would not say, in which
    /// case membership is looked up in the group database.
    pub groups: Option<Vec<u32>>,
}

impl Identity {
    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid
            || match &self.groups {
                Some(groups) => groups.contains(&gid),
                None => tutti_sys::uid_in_group(self.uid, gid),
            }
    }

    fn is(&self, p: Principal) -> bool {
        match p {
            Principal::Anyone => true,
            Principal::Uid(uid) => self.uid == uid,
            Principal::Gid(gid) => self.in_group(gid),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: String,
    /// The part before `*` of a prefix pattern; None for an exact name.
    prefix: Option<String>,
    publish: Vec<Principal>,
    subscribe: Vec<Principal>,
}

/// The `[[access]]` lists, resolved. A group no rule matches is open to everyone who may
/// attach (as without lists); an exact rule beats a pattern, and a longer prefix beats a
/// shorter one. Root is not exempt.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    rules: Vec<Rule>,
}

/// Why an access check refused a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub right: Right,
    /// The `group` pattern of the rule that decided.
    pub rule: String,
}

impl AccessPolicy {
    /// Resolves the config's rules (names to ids); an error names the entry.
    pub fn new(rules: &[AccessRule]) -> Result<AccessPolicy, String> {
        let mut out: Vec<Rule> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let at = |e: String| format!("access[{i}] (group = {:?}): {e}", r.group);
            let pattern = r.group.as_str();
            if pattern.is_empty() || pattern.len() > MAX_GROUP_NAME {
                return Err(at(format!("group must be 1 to {MAX_GROUP_NAME} bytes")));
            }
            let prefix = match pattern.find('*') {
                None => None,
                Some(at_star) if at_star == pattern.len() - 1 => Some(pattern[..at_star].to_string()),
                Some(_) => return Err(at("'*' may only end a pattern (a prefix match)".into())),
            };
            if out.iter().any(|o| o.pattern == pattern) {
                return Err(at("a second rule for the same group or pattern".into()));
            }
            let resolve = |list: &[String], key: &str| {
                list.iter()
                    .map(|p| parse_principal(p).map_err(|e| at(format!("{key}: {e}"))))
                    .collect::<Result<Vec<_>, _>>()
            };
            out.push(Rule {
                pattern: pattern.to_string(),
                prefix,
                publish: resolve(&r.publish, "publish")?,
                subscribe: resolve(&r.subscribe, "subscribe")?,
            });
        }
        Ok(AccessPolicy { rules: out })
    }

    fn rule_for(&self, group: &str) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.prefix.is_none() && r.pattern == group)
            .or_else(|| {
                self.rules
                    .iter()
                    .filter(|r| r.prefix.as_deref().is_some_and(|p| group.starts_with(p)))
                    .max_by_key(|r| r.prefix.as_ref().map_or(0, String::len))
            })
    }

    /// Whether `who` may have `rights` on `group`; the first right missing otherwise.
    pub fn check(&self, group: &str, who: &Identity, rights: Rights) -> Result<(), Denied> {
        let Some(rule) = self.rule_for(group) else {
            return Ok(());
        };
        for (wanted, list, right) in [
            (rights.publish, &rule.publish, Right::Publish),
            (rights.subscribe, &rule.subscribe, Right::Subscribe),
        ] {
            if wanted && !list.iter().any(|&p| who.is(p)) {
                return Err(Denied {
                    right,
                    rule: rule.pattern.clone(),
                });
            }
        }
        Ok(())
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` banked.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: std::time::Instant,
}

impl TokenBucket {
    pub fn full(burst: u32, now: std::time::Instant) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes a token if one is there.
    pub fn take(&mut self, rate: u32, burst: u32, now: std::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(group: &str, publish: &[&str], subscribe: &[&str]) -> AccessRule {
        AccessRule {
            group: group.into(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn who(uid: u32, gid: u32, groups: &[u32]) -> Identity {
        Identity {
            uid,
            gid,
            groups: Some(groups.to_vec()),
        }
    }

    #[test]
    fn no_rule_means_open_and_rules_pick_the_most_specific() {
        let policy = AccessPolicy::new(&[
            rule("orders.*", &["uid:1000"], &["gid:50"]),
            rule("orders.eu.*", &["uid:1001"], &["*"]),
            rule("orders.eu.audit", &[], &["uid:1002"]),
        ])
        .unwrap();
        let alice = who(1000, 100, &[]);
        let ops = who(1003, 100, &[50]);
        assert_eq!(policy.check("prices", &alice, Rights::BOTH), Ok(()));
        assert_eq!(policy.check("orders.us", &alice, Rights::PUBLISH), Ok(()));
        let d = policy.check("orders.us", &alice, Rights::BOTH).unwrap_err();
        assert_eq!((d.right, d.rule.as_str()), (Right::Subscribe, "orders.*"));
        assert_eq!(policy.check("orders.us", &ops, Rights::SUBSCRIBE), Ok(()));
        // The longer prefix decides: alice may not publish to orders.eu.x.
        let d = policy.check("orders.eu.x", &alice, Rights::PUBLISH).unwrap_err();
        assert_eq!((d.right, d.rule.as_str()), (Right::Publish, "orders.eu.*"));
        assert_eq!(policy.check("orders.eu.x", &alice, Rights::SUBSCRIBE), Ok(()));
        // An exact rule beats every pattern; an empty list is nobody, root included.
        let root = who(0, 0, &[]);
        assert!(policy.check("orders.eu.audit", &root, Rights::PUBLISH).is_err());
        assert_eq!(
            policy.check("orders.eu.audit", &who(1002, 1, &[]), Rights::SUBSCRIBE),
            Ok(())
        );
        // "orders" itself is not under "orders.*".
        assert_eq!(policy.check("orders", &root, Rights::BOTH), Ok(()));
    }

    #[test]
    fn bad_rules_are_named() {
        let e = AccessPolicy::new(&[rule("a*b", &[], &[])]).unwrap_err();
        assert!(e.contains("access[0]") && e.contains("'*'"), "{e}");
        let e = AccessPolicy::new(&[rule("g", &["bogus"], &[])]).unwrap_err();
        assert!(e.contains("publish") && e.contains("bogus"), "{e}");
        let e = AccessPolicy::new(&[rule("g", &[], &["user:no-such-user-tutti"])]).unwrap_err();
        assert!(e.contains("subscribe") && e.contains("no-such-user-tutti"), "{e}");
        let e = AccessPolicy::new(&[rule("g", &[], &[]), rule("g", &[], &[])]).unwrap_err();
        assert!(e.contains("access[1]"), "{e}");
        assert!(AccessPolicy::new(&[rule("g", &["user:root", "group:root", "uid:0", "gid:0"], &[])]).is_ok());
    }

    #[test]
    fn socket_mode_parses_octal() {
        assert_eq!(parse_socket_mode("0660"), Ok(0o660));
        assert_eq!(parse_socket_mode("770"), Ok(0o770));
        assert!(parse_socket_mode("0999").is_err());
        assert!(parse_socket_mode("07777").is_err());
    }

    #[test]
    fn token_bucket_refills_at_its_rate() {
        let t0 = std::time::Instant::now();
        let mut b = TokenBucket::full(2, t0);
        assert!(b.take(10, 2, t0) && b.take(10, 2, t0));
        assert!(!b.take(10, 2, t0), "burst spent");
        assert!(
            b.take(10, 2, t0 + std::time::Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!b.take(10, 2, t0 + std::time::Duration::from_millis(100)));
        // Never more than the burst banked, however long it idled.
        let later = t0 + std::time::Duration::from_secs(60);
        assert!(b.take(10, 2, later) && b.take(10, 2, later) && !b.take(10, 2, later));
    }
}
