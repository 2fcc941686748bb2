//! MQTT topic filters as blocks use them: parsing, matching with wildcard captures
//! (`ctx.matches`), topic-name validation for messages a block writes, and the cheap index
//! behind `BlockEngine::has_before_publish`.

use std::collections::HashSet;
use std::fmt;

/// Longest topic name MQTT can carry (a u16 length prefix).
pub const MAX_TOPIC_LEN: usize = 65_535;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Exact(String),
    /// `+`: exactly one level, captured.
    Plus,
    /// `#`: this level and all below (also the parent itself), captured joined with `/`.
    Hash,
}

/// A parsed MQTT topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    raw: String,
    levels: Vec<Level>,
    /// Bytes of `raw` every matching topic starts with (a cheap first test).
    literal: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterError {
    Empty,
    TooLong,
    Nul,
    HashNotLast,
    WildcardInsideLevel,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FilterError::Empty => "empty filter",
            FilterError::TooLong => "longer than 65535 bytes",
            FilterError::Nul => "contains a NUL character",
            FilterError::HashNotLast => "`#` must be the last level",
            FilterError::WildcardInsideLevel => "`+` and `#` must occupy a whole level",
        })
    }
}

impl TopicFilter {
    pub fn parse(raw: &str) -> Result<Self, FilterError> {
        if raw.is_empty() {
            return Err(FilterError::Empty);
        }
        if raw.len() > MAX_TOPIC_LEN {
            return Err(FilterError::TooLong);
        }
        if raw.contains('\0') {
            return Err(FilterError::Nul);
        }
        let parts: Vec<&str> = raw.split('/').collect();
        let last = parts.len() - 1;
        let mut levels = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let level = match *p {
                "+" => Level::Plus,
                "#" if i == last => Level::Hash,
                "#" => return Err(FilterError::HashNotLast),
                p if p.contains(['+', '#']) => return Err(FilterError::WildcardInsideLevel),
                p => Level::Exact(p.to_owned()),
            };
            levels.push(level);
        }
        Ok(TopicFilter {
            raw: raw.to_owned(),
            levels,
            literal: crate::pipeline::literal_prefix(raw),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn has_wildcards(&self) -> bool {
        self.levels.iter().any(|l| !matches!(l, Level::Exact(_)))
    }

    /// Whether `topic` matches, without allocating.
    pub fn matches(&self, topic: &str) -> bool {
        self.walk(topic, |_| {})
    }

    /// The wildcard captures when `topic` matches: `+` gives one level, `#` the rest joined
    /// with `/` (an empty string when `a/#` matches `a` itself).
    pub fn captures(&self, topic: &str) -> Option<Vec<String>> {
        let mut caps = Vec::new();
        self.walk(topic, |c| caps.push(c.to_owned()))
            .then_some(caps)
    }

    fn walk<'t>(&self, topic: &'t str, mut capture: impl FnMut(&'t str)) -> bool {
        // MQTT: a filter starting with a wildcard does not match `$`-topics ($SYS, ...).
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Exact(_))) {
            return false;
        }
        if !topic
            .as_bytes()
            .starts_with(&self.raw.as_bytes()[..self.literal])
        {
            return false;
        }
        let mut rest = Some(topic);
        for level in &self.levels {
            match level {
                Level::Hash => {
                    capture(rest.unwrap_or(""));
                    return true;
                }
                Level::Plus | Level::Exact(_) => {
                    let Some(r) = rest else { return false };
                    let (head, tail) = match r.split_once('/') {
                        Some((h, t)) => (h, Some(t)),
                        None => (r, None),
                    };
                    match level {
                        Level::Exact(want) if want != head => return false,
                        Level::Plus => capture(head),
                        _ => {}
                    }
                    rest = tail;
                }
            }
        }
        rest.is_none()
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Checks a topic name a block wants to publish to or rewrite a message to.
pub fn validate_topic_name(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("topic is empty");
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err("topic is longer than 65535 bytes");
    }
    if topic.contains(['+', '#']) {
        return Err("topic contains a wildcard (`+` or `#`)");
    }
    if topic.contains('\0') {
        return Err("topic contains a NUL character");
    }
    Ok(())
}

/// Answers "does any filter match this topic?" quickly: exact filters by hash lookup,
/// wildcard filters by a scan (block counts are small, tens at most).
#[derive(Debug, Default, Clone)]
pub struct FilterIndex {
    exact: HashSet<String>,
    wild: Vec<TopicFilter>,
}

impl FilterIndex {
    pub fn insert(&mut self, f: &TopicFilter) {
        if f.has_wildcards() {
            if !self.wild.contains(f) {
                self.wild.push(f.clone());
            }
        } else {
            self.exact.insert(f.raw.clone());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wild.is_empty()
    }

    pub fn matches(&self, topic: &str) -> bool {
        (!self.exact.is_empty() && self.exact.contains(topic))
            || self.wild.iter().any(|f| f.matches(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(f: &str, t: &str) -> Option<Vec<String>> {
        TopicFilter::parse(f).unwrap().captures(t)
    }

    #[test]
    fn parse_rejects_bad_filters() {
        assert_eq!(TopicFilter::parse(""), Err(FilterError::Empty));
        assert_eq!(TopicFilter::parse("a/#/b"), Err(FilterError::HashNotLast));
        assert_eq!(
            TopicFilter::parse("a/b+"),
            Err(FilterError::WildcardInsideLevel)
        );
        assert_eq!(
            TopicFilter::parse("a/#x"),
            Err(FilterError::WildcardInsideLevel)
        );
        assert!(TopicFilter::parse("+/+/#").is_ok());
        assert!(TopicFilter::parse("/").is_ok());
    }

    #[test]
    fn captures_follow_the_filter() {
        assert_eq!(
            caps("home/+/motion", "home/hall/motion"),
            Some(vec!["hall".into()])
        );
        assert_eq!(caps("home/+/motion", "home/hall/x"), None);
        assert_eq!(caps("home/+/motion", "home/hall/motion/x"), None);
        assert_eq!(
            caps("cams/+/#", "cams/c1/a/b/c"),
            Some(vec!["c1".into(), "a/b/c".into()])
        );
        assert_eq!(caps("a/#", "a"), Some(vec!["".into()]));
        assert_eq!(caps("#", "x/y"), Some(vec!["x/y".into()]));
        assert_eq!(caps("a/b", "a/b"), Some(vec![]));
        assert_eq!(caps("+", ""), Some(vec!["".into()]));
        assert_eq!(caps("a/+", "a/"), Some(vec!["".into()]));
        assert_eq!(caps("#", "$SYS/x"), None);
        assert_eq!(caps("+/x", "$SYS/x"), None);
        assert_eq!(caps("$SYS/#", "$SYS/x"), Some(vec!["x".into()]));
    }

    #[test]
    fn topic_names_are_checked() {
        assert!(validate_topic_name("a/b").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("a/+").is_err());
        assert!(validate_topic_name("a/#").is_err());
        assert!(validate_topic_name("a\0b").is_err());
    }

    #[test]
    fn index_matches_exact_and_wildcards() {
        let mut idx = FilterIndex::default();
        assert!(!idx.matches("a"));
        idx.insert(&TopicFilter::parse("home/+/sensors").unwrap());
        idx.insert(&TopicFilter::parse("exact/topic").unwrap());
        assert!(idx.matches("home/x/sensors"));
        assert!(idx.matches("exact/topic"));
        assert!(!idx.matches("exact/topic/2"));
        assert!(!idx.matches("home/x/motion"));
    }
}
