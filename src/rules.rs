//! The `allow` rule language: `"METHODS PATH-GLOB"`.
//!
//! `METHODS` is `*` or a comma list (`GET,HEAD`); in the glob `*` is one path segment (or
//! part of one) and `**` any number of segments. Paths are matched case-insensitively, as
//! awork routes them, and always after `path::normalize`. An entry may also name one of
//! awork's operations (`op:GetProjects`: its method on its path template, where a `{param}`
//! is one segment) or a preset.

use http::Method;

use crate::operations;

/// Presets that expand to rules, for the common kinds of client.
const PRESETS: &[(&str, &[&str])] = &[
    ("read-only", &["GET,HEAD /api/**"]),
    // A time-tracking tool (timer app, time export, billing sync): everything on time entries
    // (list, create, edit, delete, the batch and set-billable/billed/type-of-work actions: tag
    // TimeEntries), start/stop/pause/resume the timer of the caller or of a user (TimeTracking),
    // the time reports and time tracking settings; and reading what an entry refers to:
    // projects, tasks, users, types of work and companies (the project's client), `/me` and
    // its tasks. Not included: time bookings (`/timebookings`, `/projecttimebookings`), which
    // are planned capacity, not tracked time.
    (
        "time-tracking",
        &[
            "* /api/v1/timeentries/**",
            "POST /api/v1/me/timetracking/*",
            "POST /api/v1/users/*/timetracking/*",
            "GET,HEAD /api/v1/timereports",
            "GET,HEAD /api/v1/timetracking/settings",
            "GET,HEAD /api/v1/me/**",
            "GET,HEAD /api/v1/projects/**",
            "GET,HEAD /api/v1/tasks/**",
            "GET,HEAD /api/v1/users/**",
            "GET,HEAD /api/v1/typeofwork/**",
            "GET,HEAD /api/v1/companies/**",
        ],
    ),
];

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

/// Parses one `allow` entry (a rule, `op:NAME` or a preset name) into rules.
pub fn parse(entry: &str) -> Result<Vec<Rule>, String> {
    let entry = entry.trim();
    if let Some((_, rules)) = PRESETS.iter().find(|(name, _)| *name == entry) {
        return rules.iter().map(|r| parse_rule(r)).collect();
    }
    if let Some(id) = entry.strip_prefix("op:") {
        return operation(id.trim());
    }
    parse_rule(entry).map(|r| vec![r])
}

/// `op:NAME`: the method and path template of each operation named so.
fn operation(id: &str) -> Result<Vec<Rule>, String> {
    let rules: Vec<Rule> = operations::named(id)
        .map(|op| Rule {
            methods: Some(vec![op.method.clone()]),
            glob: operations::template_segments(op.path)
                .map(|s| Segment::Pattern(s.map_or_else(|| "*".to_owned(), str::to_ascii_lowercase)))
                .collect(),
        })
        .collect();
    if !rules.is_empty() {
        return Ok(rules);
    }
    let close = operations::close_ids(id);
    Err(if close.is_empty() {
        format!("op:{id} is not an operation of awork's API (operationId, as in GetProjects)")
    } else {
        format!("op:{id} is not an operation of awork's API; did you mean {}?", close.join(", "))
    })
}

/// When `entry` is a glob rule that allows no operation of awork's spec, says so. Presets and
/// `op:` entries are made of operations; a glob may be a typo, or mean an endpoint the spec
/// leaves out (`/api/v1/mcp`, `/api/v2`).
pub fn unmatched(entry: &str, rules: &[Rule]) -> Option<String> {
    let entry = entry.trim();
    if entry.starts_with("op:") || PRESETS.iter().any(|(name, _)| *name == entry) {
        return None;
    }
    let reaches = |rule: &Rule| {
        operations::all().iter().any(|op| {
            let template: Vec<Option<&str>> = operations::template_segments(op.path).collect();
            rule.methods.as_ref().is_none_or(|ms| ms.contains(&op.method)) && match_template(&rule.glob, &template)
        })
    };
    (!rules.iter().any(reaches)).then(|| {
        format!(
            "{entry:?} matches no operation in awork's API spec: check the methods and the path \
             (fine if it means an endpoint the spec leaves out, like /api/v1/mcp)"
        )
    })
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
    // The segments of a usual awork path fit on the stack: no allocation per request for them.
    const ON_STACK: usize = 16;
    let mut stack = [""; ON_STACK];
    let mut count = 0;
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        if count == ON_STACK {
            let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            return rules.iter().any(|rule| rule.allows(method, &segments));
        }
        stack[count] = segment;
        count += 1;
    }
    rules.iter().any(|rule| rule.allows(method, &stack[..count]))
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

/// Could the glob match some path of the template? A `{param}` (`None`) can be any one
/// segment, so any pattern can match it.
fn match_template(glob: &[Segment], template: &[Option<&str>]) -> bool {
    match glob.split_first() {
        None => template.is_empty(),
        Some((Segment::AnyDepth, rest)) => (0..=template.len()).any(|i| match_template(rest, &template[i..])),
        Some((Segment::Pattern(p), rest)) => match template.split_first() {
            Some((segment, template_rest)) => {
                segment.is_none_or(|literal| wildcard_match(p, literal)) && match_template(rest, template_rest)
            }
            None => false,
        },
    }
}

/// `*` inside one segment matches any run of characters; the rest compares ASCII
/// case-insensitively.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let Some((first, after)) = pattern.split_once('*') else {
        return text.eq_ignore_ascii_case(pattern);
    };
    if !starts_with_ignore_case(text, first) {
        return false;
    }
    let mut rest = &text[first.len()..];
    // Split in place, not collected: this runs for every request a rule is checked against.
    let (middle, last) = after.rsplit_once('*').unwrap_or(("", after));
    for part in middle.split('*').filter(|part| !part.is_empty()) {
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
    fn paths_deeper_than_the_segments_kept_on_the_stack_match_alike() {
        let deep = format!("/api/v1{}", "/x".repeat(30));
        assert!(allows("GET /api/v1/**", Method::GET, &deep));
        assert!(allows("GET /api/**/x", Method::GET, &deep));
        assert!(!allows("GET /api/v1/*/x", Method::GET, &deep));
        assert!(!allows("GET /api/v2/**", Method::GET, &deep));
        let sixteen = format!("/api{}", "/x".repeat(15));
        assert!(allows(&format!("GET /api{}", "/*".repeat(15)), Method::GET, &sixteen));
        assert!(!allows(&format!("GET /api{}", "/*".repeat(16)), Method::GET, &sixteen));
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
    fn stars_within_a_segment_match_their_parts_in_order() {
        assert!(allows("GET /x/a*b*c", Method::GET, "/x/a1b2c"));
        assert!(allows("GET /x/a*b*c", Method::GET, "/x/ABC"));
        assert!(!allows("GET /x/a*b*c", Method::GET, "/x/a1c2b"));
        assert!(!allows("GET /x/a*b*c", Method::GET, "/x/a1b2c3"));
        assert!(allows("GET /x/*b*", Method::GET, "/x/b"));
        assert!(!allows("GET /x/*b*", Method::GET, "/x/c"));
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
    fn an_operation_allows_its_method_on_its_template() {
        assert!(allows("op:GetProjects", Method::GET, "/api/v1/projects"));
        assert!(allows("op:getprojects", Method::GET, "/API/V1/Projects"));
        assert!(!allows("op:GetProjects", Method::POST, "/api/v1/projects"));
        assert!(!allows("op:GetProjects", Method::GET, "/api/v1/projects/1"));
        assert!(allows("op:GetProjectTimeEntries", Method::GET, "/api/v1/projects/p-1/timeentries"));
        assert!(!allows("op:GetProjectTimeEntries", Method::GET, "/api/v1/projects/p/1/timeentries"));
        assert!(!allows("op:GetProjectTimeEntries", Method::GET, "/api/v1/projects/timeentries"));
    }

    #[test]
    fn an_operation_id_naming_several_paths_allows_each() {
        assert!(allows("op:GetProjectFileContent", Method::GET, "/api/v1/projects/1/files/2/download"));
        assert!(allows("op:GetProjectFileContent", Method::GET, "/api/v1/projects/1/files/2/pdf"));
        assert!(!allows("op:GetProjectFileContent", Method::GET, "/api/v1/projects/1/files/2"));
    }

    #[test]
    fn an_unknown_operation_suggests_close_names() {
        let err = parse("op:GetProject").expect_err("no such operation");
        assert!(err.contains("did you mean GetProjects"), "{err}");
        let err = parse("op:Nonsense").expect_err("no such operation");
        assert!(err.contains("not an operation of awork's API"), "{err}");
    }

    #[test]
    fn time_tracking_preset_writes_time_and_reads_what_it_refers_to() {
        for (method, path) in [
            (Method::GET, "/api/v1/timeentries"),
            (Method::POST, "/api/v1/timeentries"),
            (Method::PUT, "/api/v1/timeentries/7"),
            (Method::DELETE, "/api/v1/timeentries/7"),
            (Method::POST, "/api/v1/me/timetracking/start"),
            (Method::POST, "/api/v1/users/u1/timetracking/stop"),
            (Method::GET, "/api/v1/projects/p1/projecttasks"),
            (Method::GET, "/api/v1/typeofwork"),
            (Method::GET, "/api/v1/me"),
        ] {
            assert!(allows("time-tracking", method.clone(), path), "{method} {path}");
        }
        for (method, path) in [
            (Method::POST, "/api/v1/projects"),
            (Method::DELETE, "/api/v1/tasks/1"),
            (Method::POST, "/api/v1/timebookings"),
            (Method::GET, "/api/v1/absences"),
        ] {
            assert!(!allows("time-tracking", method.clone(), path), "{method} {path}");
        }
    }

    #[test]
    fn every_preset_rule_reaches_an_operation() {
        for (name, rules) in PRESETS {
            for rule in *rules {
                let parsed = parse(rule).expect("preset rule");
                assert_eq!(unmatched(rule, &parsed), None, "preset {name}");
            }
        }
    }

    #[test]
    fn a_glob_matching_no_operation_is_reported() {
        let reported = |entry: &str| unmatched(entry, &parse(entry).expect("rule"));
        assert!(reported("GET /api/v1/projetcs/**").is_some());
        assert!(reported("DELETE /api/v1/timereports").is_some(), "the path exists, the method does not");
        assert!(reported("* /api/v2/**").is_some());
        assert_eq!(reported("GET /api/v1/projects/*"), None);
        assert_eq!(reported("GET /api/v1/projects/42/timeentries"), None, "a literal matches a {{param}}");
        assert_eq!(reported("* /api/**/files"), None);
        assert_eq!(reported("GET /api/v1/time*"), None);
        assert_eq!(reported("op:GetProjects"), None);
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
