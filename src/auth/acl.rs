//! Topic access control. Rules are tried in order and the first rule that applies to the client
//! and matches the topic decides; with no rule at all everything is allowed, with any rule the
//! default is deny. Patterns may contain `%u` (username or certificate identity) and `%c` (client
//! id). Subscriptions with wildcards are granted only when every topic they could match is
//! readable. `$SYS/…` is readable by admins only.

use crate::pipeline::filter_matches;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn read(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }
    fn write(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

/// One `[[acl]]` rule.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Applies to this username (or certificate identity). Unset: any client.
    #[serde(default)]
    pub user: Option<String>,
    /// Applies to this client id. Unset: any client.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Applies only to clients without a username.
    #[serde(default)]
    pub anonymous: bool,
    /// Topic filter, with `%u` and `%c` substituted.
    pub topic: String,
    pub access: Access,
}

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Principal<'a> {
    pub username: Option<&'a str>,
    pub client_id: &'a str,
    pub admin: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Acl {
    rules: Vec<Rule>,
}

/// Substitutes `%u`/`%c`. A value that would change the pattern's shape (contains `/ + #`)
/// makes the rule not apply, so a username cannot widen its own grant.
fn expand(pattern: &str, who: &Principal<'_>) -> Option<String> {
    let safe = |v: &str| !v.is_empty() && !v.contains(['/', '+', '#']);
    let mut out = pattern.to_string();
    if out.contains("%u") {
        let u = who.username.filter(|u| safe(u))?;
        out = out.replace("%u", u);
    }
    if out.contains("%c") {
        if !safe(who.client_id) {
            return None;
        }
        out = out.replace("%c", who.client_id);
    }
    Some(out)
}

/// Every topic matched by `filter` is matched by `pattern`.
fn covers(pattern: &str, filter: &str) -> bool {
    let mut p = pattern.split('/');
    let mut f = filter.split('/');
    loop {
        match (p.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b && b != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Some topic is matched by both filters.
fn overlaps(a: &str, b: &str) -> bool {
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Acl {
    pub fn new(rules: Vec<Rule>) -> Self {
        Acl { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn applicable<'r>(
        &'r self,
        who: &'r Principal<'r>,
    ) -> impl Iterator<Item = (&'r Rule, String)> + 'r {
        self.rules.iter().filter_map(move |r| {
            let user_ok = r.user.as_deref().is_none_or(|u| who.username == Some(u));
            let client_ok = r.client_id.as_deref().is_none_or(|c| who.client_id == c);
            let anon_ok = !r.anonymous || who.username.is_none();
            if user_ok && client_ok && anon_ok {
                expand(&r.topic, who).map(|p| (r, p))
            } else {
                None
            }
        })
    }

    /// May `who` publish to `topic`?
    pub fn can_publish(&self, who: &Principal<'_>, topic: &str) -> bool {
        if topic.starts_with("$SYS") {
            return false;
        }
        if self.rules.is_empty() {
            return true;
        }
        self.applicable(who)
            .find(|(_, p)| filter_matches(p, topic))
            .is_some_and(|(r, _)| r.access.write())
    }

    /// May `who` subscribe to `filter`?
    pub fn can_subscribe(&self, who: &Principal<'_>, filter: &str) -> bool {
        let filter = filter
            .strip_prefix("$share/")
            .and_then(|rest| rest.split_once('/').map(|(_, f)| f))
            .unwrap_or(filter);
        if filter.starts_with("$SYS") {
            return who.admin;
        }
        if self.rules.is_empty() {
            return true;
        }
        for (rule, pattern) in self.applicable(who) {
            if covers(&pattern, filter) {
                return rule.access.read();
            }
            if overlaps(&pattern, filter) && !rule.access.read() {
                // Part of what the filter could match is denied: refuse the whole filter.
                return false;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(user: Option<&str>, topic: &str, access: Access) -> Rule {
        Rule {
            user: user.map(str::to_string),
            client_id: None,
            anonymous: false,
            topic: topic.into(),
            access,
        }
    }

    fn who<'a>(u: Option<&'a str>, c: &'a str) -> Principal<'a> {
        Principal {
            username: u,
            client_id: c,
            admin: false,
        }
    }

    #[test]
    fn no_rules_allows_all_but_sys() {
        let acl = Acl::default();
        assert!(acl.can_publish(&who(None, "c"), "a/b"));
        assert!(acl.can_subscribe(&who(None, "c"), "#"));
        assert!(!acl.can_subscribe(&who(None, "c"), "$SYS/#"));
        assert!(acl.can_subscribe(
            &Principal {
                admin: true,
                ..who(None, "c")
            },
            "$SYS/#"
        ));
    }

    #[test]
    fn user_substitution_confines_devices() {
        let acl = Acl::new(vec![
            rule(None, "cameras/%u/#", Access::ReadWrite),
            rule(Some("dash"), "cameras/+/thumb", Access::Read),
        ]);
        let cam = who(Some("cam1"), "cam1");
        assert!(acl.can_publish(&cam, "cameras/cam1/frame"));
        assert!(!acl.can_publish(&cam, "cameras/cam2/frame"));
        assert!(acl.can_subscribe(&cam, "cameras/cam1/#"));
        assert!(
            !acl.can_subscribe(&cam, "cameras/#"),
            "wildcard wider than the grant"
        );
        assert!(!acl.can_subscribe(&cam, "#"));
        let dash = who(Some("dash"), "d");
        assert!(acl.can_subscribe(&dash, "cameras/+/thumb"));
        assert!(acl.can_subscribe(&dash, "cameras/cam1/thumb"));
        assert!(!acl.can_publish(&dash, "cameras/cam1/thumb"));
        // Anonymous clients and usernames with wildcards get nothing from %u rules.
        assert!(!acl.can_publish(&who(None, "x"), "cameras//frame"));
        assert!(!acl.can_subscribe(&who(Some("#"), "x"), "cameras/#"));
        assert!(!acl.can_publish(&who(Some("a/b"), "x"), "cameras/a/b/frame"));
    }

    #[test]
    fn deny_rules_cut_holes_in_wildcards() {
        let acl = Acl::new(vec![
            rule(None, "home/secret/#", Access::Deny),
            rule(None, "home/#", Access::Read),
        ]);
        let c = who(Some("u"), "c");
        assert!(acl.can_subscribe(&c, "home/hall/#"));
        assert!(
            !acl.can_subscribe(&c, "home/#"),
            "would include home/secret"
        );
        assert!(!acl.can_subscribe(&c, "home/+/x"), "+ could be secret");
        assert!(!acl.can_subscribe(&c, "home/secret/x"));
        assert!(!acl.can_publish(&c, "home/hall"), "read-only");
    }

    #[test]
    fn covers_and_overlaps() {
        assert!(covers("a/#", "a/b/+"));
        assert!(covers("a/+", "a/b"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(covers("#", "#"));
        assert!(overlaps("a/+/c", "a/b/#"));
        assert!(!overlaps("a/b", "a/c"));
        assert!(!overlaps("a/b/c", "a/b"));
    }
}
