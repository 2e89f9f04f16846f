//! awork's API operations by name, generated from its OpenAPI spec (`operations/table.rs`,
//! written by `scripts/gen-operations.py`), so that rules can say `op:GetProjects`, `check`
//! can tell a glob that reaches nothing, and a request can be known as the operation it is.

use http::Method;

mod table;

/// One operation of awork's spec.
#[derive(Debug, PartialEq, Eq)]
pub struct Operation {
    /// The spec's `operationId`, e.g. `GetProjects`. A few ids name several paths.
    pub id: &'static str,
    pub method: Method,
    /// The path template as awork routes it, e.g. `/api/v1/projects/{projectId}`.
    pub path: &'static str,
    /// Lists in pages: takes `page` and `pageSize` query parameters.
    pub paged: bool,
}

/// Every operation of the spec, sorted by path and method.
pub fn all() -> &'static [Operation] {
    table::OPERATIONS
}

/// The operations named `id` (ASCII case-insensitive; usually one, a few ids name several).
pub fn named(id: &str) -> impl Iterator<Item = &'static Operation> {
    all().iter().filter(move |op| op.id.eq_ignore_ascii_case(id))
}

/// The operation a request for `method` on the normalised `path` (no query) is. Literal
/// segments compare case-insensitively and a `{param}` is exactly one segment; where several
/// templates match (`/timeentries/simplified` and `/timeentries/{timeEntryId}`), the one
/// with a literal at the first place they differ wins, as awork routes it.
pub fn find(method: &Method, path: &str) -> Option<&'static Operation> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    all()
        .iter()
        .filter(|op| op.method == *method && template_matches(op.path, &segments))
        .max_by(|a, b| literal_places(a.path).cmp(literal_places(b.path)))
}

/// The template's segments, `None` for a `{param}`.
pub fn template_segments(template: &str) -> impl Iterator<Item = Option<&str>> {
    template.split('/').filter(|s| !s.is_empty()).map(|s| (!is_param(s)).then_some(s))
}

fn is_param(segment: &str) -> bool {
    segment.starts_with('{') && segment.ends_with('}')
}

fn template_matches(template: &str, path: &[&str]) -> bool {
    let mut path = path.iter();
    template_segments(template).all(|t| match (t, path.next()) {
        (Some(literal), Some(segment)) => literal.eq_ignore_ascii_case(segment),
        (None, Some(_)) => true,
        (_, None) => false,
    }) && path.next().is_none()
}

/// Compares templates of equal length: `true` (literal) above `false` (param), place by place.
fn literal_places(template: &str) -> impl Iterator<Item = bool> + '_ {
    template_segments(template).map(|s| s.is_some())
}

/// Up to three operation ids close to `id`, to suggest for a misspelt one.
pub fn close_ids(id: &str) -> Vec<&'static str> {
    let wanted = id.to_ascii_lowercase();
    let mut scored: Vec<(usize, &'static str)> = Vec::new();
    for op in all() {
        if scored.iter().any(|(_, known)| *known == op.id) {
            continue;
        }
        let candidate = op.id.to_ascii_lowercase();
        let distance = edit_distance(&wanted, &candidate);
        if distance <= (wanted.len() / 3).max(2) || (wanted.len() >= 4 && candidate.contains(&wanted)) {
            scored.push((distance, op.id));
        }
    }
    scored.sort();
    scored.into_iter().take(3).map(|(_, id)| id).collect()
}

/// Levenshtein distance over bytes (operation ids are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_holds_every_operation_of_the_spec() {
        // The counts AWORK.md gives for the spec: 707 operations, 90 of them paged.
        let count = |m: Method| all().iter().filter(|op| op.method == m).count();
        assert_eq!(all().len(), 707);
        assert_eq!(
            (count(Method::GET), count(Method::POST), count(Method::PUT), count(Method::DELETE)),
            (292, 271, 75, 69)
        );
        assert_eq!(all().iter().filter(|op| op.paged).count(), 90);
        assert!(all().iter().all(|op| op.path.starts_with("/api/v1/")), "the spec's server path is /api/v1");
    }

    #[test]
    fn find_matches_a_concrete_path_against_the_templates() {
        let op = find(&Method::GET, "/api/v1/projects").expect("GetProjects");
        assert_eq!((op.id, op.paged), ("GetProjects", true));
        let op = find(&Method::GET, "/API/v1/Projects/4f1c-77").expect("one project");
        assert_eq!(op.path, "/api/v1/projects/{projectId}");
        assert!(!op.paged);
        assert_eq!(find(&Method::PATCH, "/api/v1/projects"), None);
        assert_eq!(find(&Method::GET, "/api/v1/projects/1/nothing-here"), None);
        assert_eq!(find(&Method::GET, "/api/v2/projects"), None);
    }

    #[test]
    fn a_param_is_exactly_one_segment() {
        assert_eq!(find(&Method::GET, "/api/v1/projects/1/timeentries").map(|op| op.id), Some("GetProjectTimeEntries"));
        assert_eq!(find(&Method::GET, "/api/v1/projects/1/2/timeentries"), None);
    }

    #[test]
    fn a_literal_segment_wins_over_a_param() {
        assert_eq!(
            find(&Method::GET, "/api/v1/timeentries/simplified").map(|op| op.id),
            Some("GetTimeEntriesSimplified")
        );
        assert_eq!(find(&Method::GET, "/api/v1/timeentries/42").map(|op| op.id), Some("GetTimeEntryById"));
    }

    #[test]
    fn an_id_may_name_several_paths() {
        let paths: Vec<&str> = named("getprojectfilecontent").map(|op| op.path).collect();
        assert_eq!(
            paths,
            ["/api/v1/projects/{projectId}/files/{fileId}/download", "/api/v1/projects/{projectId}/files/{fileId}/pdf"]
        );
    }

    #[test]
    fn close_ids_suggest_what_was_meant() {
        assert_eq!(close_ids("GetProject").first(), Some(&"GetProjects"));
        assert!(close_ids("GetTimeEntrys").contains(&"GetTimeEntries"), "{:?}", close_ids("GetTimeEntrys"));
        assert_eq!(close_ids("Xyzzy"), Vec::<&str>::new());
    }
}
