//! The `allow` rule language: `"METHODS PATH-GLOB"`.
//!
//! `METHODS` is `*` or a comma list (`GET,HEAD`); in the glob `*` is one path segment (or
//! part of one) and `**` any number of segments. Paths are matched case-insensitively, as
//! awork routes them, and always after `path::normalize`.

use http::Method;

/// Presets that expand to rules, for the common kinds of client.
const PRESETS: &[(&str, &[&str])] = &[("read-only", &["GET,HEAD /api/**"])];

/// One parsed `allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    methods: Option<Vec<Method>>,
    glob: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    AnyDepth,
    Pattern(String),
}

/// Parses one `allow` entry, or a preset name, into rules.
pub fn parse(entry: &str) -> Result<Vec<Rule>, String> {
    let entry = entry.trim();
    if let Some((_, rules)) = PRESETS.iter().find(|(name, _)| *name == entry) {
        return rules.iter().map(|r| parse_rule(r)).collect();
    }
    parse_rule(entry).map(|r| vec![r])
}

fn parse_rule(entry: &str) -> Result<Rule, String> {
    let presets: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
    let Some((methods, glob)) = entry.split_once(char::is_whitespace) else {
        return Err(format!(
            "{entry:?} is not \"METHODS PATH-GLOB\" (e.g. \"GET,HEAD /api/v1/**\") nor a preset ({})",
            presets.join(", ")
        ));
    };
    Ok(Rule { methods: parse_methods(methods)?, glob: parse_glob(glob.trim())? })
}

fn parse_methods(methods: &str) -> Result<Option<Vec<Method>>, String> {
    if methods == "*" {
        return Ok(None);
    }
    methods
        .split(',')
        .map(|m| {
            Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("{m:?} is not an HTTP method"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn parse_glob(glob: &str) -> Result<Vec<Segment>, String> {
    if !glob.starts_with('/') {
        return Err(format!("path glob {glob:?} must start with '/'"));
    }
    if let Some(c) = glob.chars().find(|c| "?#[]{}\\ ".contains(*c)) {
        return Err(format!("path glob {glob:?} contains {c:?}; only '*' and '**' are wildcards"));
    }
    let segments: Vec<&str> = glob[1..].split('/').collect();
    let last = segments.len() - 1;
    segments
        .iter()
        .enumerate()
        .filter(|(i, s)| !(s.is_empty() && *i == last))
        .map(|(_, s)| match *s {
            "" => Err(format!("path glob {glob:?} has an empty segment ('//')")),
            "." | ".." => Err(format!("path glob {glob:?} has a dot segment")),
            "**" => Ok(Segment::AnyDepth),
            s if s.contains("**") => Err(format!("path glob {glob:?}: '**' must be a whole segment, as in /api/**")),
            s => Ok(Segment::Pattern(s.to_ascii_lowercase())),
        })
        .collect()
}

/// Does any of `rules` allow `method` on the normalised `path`? The path is split once.
pub fn allows_any(rules: &[Rule], method: &Method, path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    rules.iter().any(|rule| rule.allows(method, &segments))
}

impl Rule {
    fn allows(&self, method: &Method, segments: &[&str]) -> bool {
        self.methods.as_ref().is_none_or(|ms| ms.contains(method)) && match_segments(&self.glob, segments)
    }
}

fn match_segments(glob: &[Segment], path: &[&str]) -> bool {
    match glob.split_first() {
        None => path.is_empty(),
        Some((Segment::AnyDepth, rest)) => (0..=path.len()).any(|i| match_segments(rest, &path[i..])),
        Some((Segment::Pattern(p), rest)) => match path.split_first() {
            Some((segment, path_rest)) => wildcard_match(p, segment) && match_segments(rest, path_rest),
            None => false,
        },
    }
}

/// `*` inside one segment matches any run of characters; the rest compares ASCII
/// case-insensitively.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    if !starts_with_ignore_case(text, first) {
        return false;
    }
    let mut rest = &text[first.len()..];
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match find_ignore_case(rest, part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    // Compared as bytes: `rest.len() - last.len()` may fall inside a multi-byte character.
    rest.len() >= last.len() && rest.as_bytes()[rest.len() - last.len()..].eq_ignore_ascii_case(last.as_bytes())
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len() && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn find_ignore_case(text: &str, needle: &str) -> Option<usize> {
    (0..=text.len().checked_sub(needle.len())?)
        .find(|&i| text.as_bytes()[i..i + needle.len()].eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(rule: &str, method: Method, path: &str) -> bool {
        allows_any(&parse(rule).expect("rule"), &method, path)
    }

    #[test]
    fn double_star_matches_any_depth_including_none() {
        assert!(allows("GET /api/v1/**", Method::GET, "/api/v1"));
        assert!(allows("GET /api/v1/**", Method::GET, "/api/v1/projects/1/tasks"));
        assert!(!allows("GET /api/v1/**", Method::GET, "/api/v2/x"));
        assert!(allows("* /api/**/files", Method::PUT, "/api/v1/tasks/7/files"));
    }

    #[test]
    fn single_star_is_exactly_one_segment() {
        assert!(allows("GET /api/v1/projects/*", Method::GET, "/api/v1/projects/42"));
        assert!(!allows("GET /api/v1/projects/*", Method::GET, "/api/v1/projects/42/tasks"));
        assert!(!allows("GET /api/v1/projects/*", Method::GET, "/api/v1/projects"));
        assert!(allows("GET /api/v1/time*", Method::GET, "/api/v1/timeentries"));
        assert!(!allows("GET /api/v1/time*", Method::GET, "/api/v1/users"));
    }

    #[test]
    fn a_suffix_after_a_star_is_matched_on_non_ascii_segments() {
        // Reproduced by fuzz/path_policy: slicing "ééa" 4 bytes from its end panicked.
        assert!(!allows("GET /x/*.pdf", Method::GET, "/x/ééa"));
        assert!(allows("GET /x/*.pdf", Method::GET, "/x/é.PDF"));
    }

    #[test]
    fn methods_are_a_list_or_any() {
        assert!(allows("GET,HEAD /x", Method::HEAD, "/x"));
        assert!(!allows("GET,HEAD /x", Method::POST, "/x"));
        assert!(allows("* /x", Method::DELETE, "/x"));
        assert!(allows("get /x", Method::GET, "/x"));
    }

    #[test]
    fn paths_match_case_insensitively_as_awork_routes_them() {
        assert!(allows("GET /api/v1/Projects", Method::GET, "/API/v1/projects"));
    }

    #[test]
    fn read_only_preset_allows_reads_only() {
        assert!(allows("read-only", Method::GET, "/api/v1/projects"));
        assert!(!allows("read-only", Method::POST, "/api/v1/projects"));
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for (rule, needle) in [
            ("/api/**", "METHODS PATH-GLOB"),
            ("GET api/**", "must start with '/'"),
            ("GET /api/v?", "only '*' and '**'"),
            ("GET /api/a**", "whole segment"),
            ("GET /api//x", "empty segment"),
            ("G(T /x", "not an HTTP method"),
        ] {
            let err = parse(rule).expect_err(rule);
            assert!(err.contains(needle), "{rule}: {err}");
        }
    }
}
