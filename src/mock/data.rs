//! Deterministic awork-shaped records, generated from their index on demand: a page of a list
//! costs only its own items, and the same index always yields the same record, so tests can
//! compare pages across runs. Shapes follow awork's OpenAPI (`User`, `Project`, `TimeTracking`).

use serde_json::{Value, json};

const KIND_USER: u64 = 1;
const KIND_PROJECT: u64 = 2;
const KIND_COMPANY: u64 = 3;
const KIND_TIME_ENTRY: u64 = 4;
const KIND_TASK: u64 = 5;
const KIND_NAMED_USER: u64 = 6;
const KIND_FIXED: u64 = 7;

/// Seconds since the epoch of 2024-01-01T00:00:00Z, the start of generated history.
const EPOCH_2024: i64 = 1_704_067_200;

const FIRST_NAMES: [&str; 24] = [
    "Ada",
    "Grace",
    "Alan",
    "Katherine",
    "Linus",
    "Margaret",
    "Dennis",
    "Barbara",
    "Ken",
    "Frances",
    "Donald",
    "Radia",
    "Edsger",
    "Hedy",
    "John",
    "Sophie",
    "Tim",
    "Karen",
    "Niklaus",
    "Lynn",
    "Bjarne",
    "Shafi",
    "Guido",
    "Anita",
];

const LAST_NAMES: [&str; 23] = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Johnson",
    "Torvalds",
    "Hamilton",
    "Ritchie",
    "Liskov",
    "Thompson",
    "Allen",
    "Knuth",
    "Perlman",
    "Dijkstra",
    "Lamarr",
    "Backus",
    "Wilson",
    "Berners-Lee",
    "Spärck Jones",
    "Wirth",
    "Conway",
    "Stroustrup",
    "Goldwasser",
    "van Rossum",
];

const PROJECT_WORDS: [&str; 12] = [
    "Website Relaunch",
    "Brand Refresh",
    "Mobile App",
    "Data Migration",
    "Onboarding Flow",
    "Quarterly Report",
    "Trade Fair",
    "Newsletter",
    "Customer Portal",
    "Security Audit",
    "Product Launch",
    "Intranet",
];

const COMPANY_WORDS: [&str; 10] =
    ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Tyrell", "Soylent", "Cyberdyne"];

const COMPANY_SUFFIXES: [&str; 4] = ["GmbH", "AG", "Ltd", "Inc"];

const STATUSES: [(&str, &str); 4] =
    [("Not started", "not-started"), ("In progress", "progress"), ("Stuck", "stuck"), ("Done", "closed")];

const TYPES_OF_WORK: [&str; 4] = ["Design", "Development", "Consulting", "Project management"];

const COLORS: [&str; 6] = ["purple", "blue", "green", "yellow", "red", "teal"];

/// splitmix64: a cheap, well-mixed hash of an integer.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A version-4-looking GUID derived from a record kind and index.
pub(crate) fn guid(kind: u64, index: u64) -> String {
    let a = mix(kind.wrapping_mul(0x1000_0000_01B3) ^ mix(index));
    let b = mix(a);
    guid_from_bits(a, b)
}

fn guid_from_bits(a: u64, b: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// A fresh random GUID (for uploads and trace ids).
pub(crate) fn random_guid() -> String {
    guid_from_bits(rand::random(), rand::random())
}

/// FNV-1a, stable across Rust versions (unlike `DefaultHasher`).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3))
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch.
pub(crate) fn iso_datetime(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::civil::civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem / 60) % 60, rem % 60)
}

fn hh_mm_ss(secs: i64) -> String {
    let rem = secs.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", rem / 3600, (rem / 60) % 60, rem % 60)
}

/// Element `n` modulo the (non-empty, constant) list.
fn pick<T: Copy, const N: usize>(items: &[T; N], n: u64) -> T {
    items[(n % N as u64) as usize]
}

/// `(first, last)` of a display name: the first word, then the rest.
pub(crate) fn split_name(name: &str) -> (String, String) {
    let name = name.trim();
    match name.split_once(char::is_whitespace) {
        Some((first, last)) => (first.to_owned(), last.trim().to_owned()),
        None => (name.to_owned(), String::new()),
    }
}

fn email_for(first: &str, last: &str) -> String {
    let clean =
        |s: &str| -> String { s.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect() };
    let local = [clean(first), clean(last)].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join(".");
    let local = if local.is_empty() { "user".into() } else { local };
    format!("{local}@example.com")
}

fn stamp(index: u64, spread_days: u64) -> i64 {
    let offset = mix(index) % (spread_days.max(1) * 86_400);
    EPOCH_2024 + i64::try_from(offset).unwrap_or(0)
}

fn user_name(index: u64) -> (&'static str, &'static str) {
    let first = pick(&FIRST_NAMES, index);
    let last = pick(&LAST_NAMES, index.wrapping_add(index / FIRST_NAMES.len() as u64));
    (first, last)
}

fn nested_user(index: u64) -> Value {
    let (first, last) = user_name(index);
    json!({
        "id": guid(KIND_USER, index),
        "firstName": first,
        "lastName": last,
        "hasImage": false,
        "isExternal": false,
    })
}

fn contact_email(id_seed: u64, email: &str) -> Value {
    json!([{
        "id": guid(KIND_FIXED, id_seed),
        "label": null,
        "value": email,
        "type": "email",
        "subType": "work",
        "isAddress": false,
    }])
}

fn user_body(id: String, first: &str, last: &str, seed: u64) -> Value {
    let created = iso_datetime(stamp(seed, 60));
    let creator = guid(KIND_USER, 0);
    json!({
        "id": id,
        "firstName": first,
        "lastName": last,
        "birthDate": null,
        "gender": null,
        "title": null,
        "position": pick(&TYPES_OF_WORK, seed),
        "language": "en-GB",
        "status": { "invitationAccepted": true, "isDeactivated": false },
        "createdOn": created,
        "createdBy": creator,
        "updatedOn": created,
        "updatedBy": creator,
        "isArchived": false,
        "isDeactivated": false,
        "isAgent": false,
        "hasImage": false,
        "shouldMigrateToConnect": false,
        "userContactInfos": contact_email(seed, &email_for(first, last)),
        "resourceVersion": 1,
        "tags": [],
        "teams": [],
        "isExternal": false,
    })
}

/// Item `index` of `GET /users`.
pub(crate) fn user(index: u64) -> Value {
    let (first, last) = user_name(index);
    user_body(guid(KIND_USER, index), first, last, index)
}

/// `GET /me` for a display name: the same name always has the same id.
pub(crate) fn me(name: &str) -> Value {
    let (first, last) = split_name(name);
    let seed = fnv1a(name);
    let mut body = user_body(guid(KIND_NAMED_USER, seed), &first, &last, seed);
    if let Value::Object(map) = &mut body {
        map.insert("email".into(), json!(email_for(&first, &last)));
        map.insert("accountId".into(), json!(guid(KIND_FIXED, seed ^ 1)));
        map.insert(
            "workspace".into(),
            json!({
                "id": guid(KIND_FIXED, 0),
                "name": "Mock Workspace",
                "url": "mock.awork.com",
            }),
        );
    }
    body
}

/// Companies behind `projects` projects (ten projects per company, at least one).
fn company_count(projects: u64) -> u64 {
    (projects / 10).max(1)
}

fn company(index: u64) -> Value {
    let name = format!(
        "{} {} {}",
        pick(&COMPANY_WORDS, index),
        index / COMPANY_WORDS.len() as u64 + 1,
        pick(&COMPANY_SUFFIXES, index / 3)
    );
    json!({
        "id": guid(KIND_COMPANY, index),
        "name": name,
        "hasImage": false,
        "description": null,
        "tags": [],
    })
}

fn project_status(index: u64) -> Value {
    let n = mix(index ^ 0x5757) % STATUSES.len() as u64;
    let (name, kind) = pick(&STATUSES, n);
    json!({
        "id": guid(KIND_FIXED, 100 + n),
        "name": name,
        "description": null,
        "type": kind,
        "isArchived": false,
        "typeOrder": n,
        "isExternal": false,
    })
}

/// The index of the project whose id is `id`, out of `projects` (for `GET /projects/{id}`).
pub(crate) fn project_index(id: &str, projects: u64) -> Option<u64> {
    (0..projects).find(|&index| guid(KIND_PROJECT, index).eq_ignore_ascii_case(id))
}

/// Item `index` of `GET /projects`, out of `projects` in total.
pub(crate) fn project(index: u64, projects: u64, users: u64) -> Value {
    let users = users.max(1);
    let company_index = index % company_count(projects);
    let created = stamp(index ^ 0xABCD, 365);
    let start = created + 86_400 * 3;
    let creator = guid(KIND_USER, mix(index) % users);
    let name = format!("{} {:04}", pick(&PROJECT_WORDS, index), index + 1);
    json!({
        "id": guid(KIND_PROJECT, index),
        "name": name,
        "description": null,
        "isPrivate": false,
        "startDate": iso_datetime(start),
        "dueDate": iso_datetime(start + 86_400 * (14 + (mix(index) % 90) as i64)),
        "companyId": guid(KIND_COMPANY, company_index),
        "timeBudget": 3600 * (10 + mix(index) % 200),
        "isBillableByDefault": index % 3 != 0,
        "color": pick(&COLORS, index),
        "projectKey": format!("P{:04}", index + 1),
        "hasImage": false,
        "createdOn": iso_datetime(created),
        "createdBy": creator,
        "updatedOn": iso_datetime(created + 3600),
        "updatedBy": creator,
        "closedOn": null,
        "projectType": {
            "id": guid(KIND_FIXED, 200 + index % 3),
            "name": pick(&["Client project", "Internal", "Retainer"], index),
            "icon": "briefcase",
            "isArchived": false,
        },
        "projectStatus": project_status(index),
        "company": company(company_index),
        "tags": [],
        "plannedDuration": 3600 * (5 + mix(index ^ 7) % 100),
        "tasksCount": mix(index ^ 3) % 80,
        "tasksDoneCount": mix(index ^ 3) % 80 / 2,
        "members": [],
        "trackedDuration": 900 * (mix(index ^ 11) % 400),
        "resourceVersion": 1,
        "teams": [],
        "isExternal": false,
        "isRetainer": index % 3 == 2,
        "isMultiAssignmentAllowed": true,
    })
}

/// Item `index` of `GET /timeentries`: entries walk forward through 2024 in order.
pub(crate) fn time_entry(index: u64, projects: u64, users: u64) -> Value {
    let (projects, users) = (projects.max(1), users.max(1));
    // Eight entries a working day, cycling after a hundred years (no overflow on any index).
    let day = i64::try_from(index / 8 % 36_500).unwrap_or(0);
    let start = EPOCH_2024 + day * 86_400 + 8 * 3600 + i64::try_from(index % 8).unwrap_or(0) * 3600;
    let duration = 900 + i64::try_from(mix(index) % 10).unwrap_or(0) * 300;
    let end = start + duration;
    let project_index = mix(index ^ 0x77) % projects;
    let user_index = mix(index ^ 0x99) % users;
    let work = mix(index ^ 0x55) % TYPES_OF_WORK.len() as u64;
    let user_id = guid(KIND_USER, user_index);
    let project = project(project_index, projects, users);
    let task_id = guid(KIND_TASK, index / 4);
    json!({
        "id": guid(KIND_TIME_ENTRY, index),
        "isBillable": index % 4 != 0,
        "isBilled": index % 10 == 0,
        "taskId": task_id,
        "projectId": project["id"],
        "note": format!("Work item {}", index + 1),
        "startDateUtc": iso_datetime(start - start.rem_euclid(86_400)),
        "startTimeUtc": hh_mm_ss(start),
        "endDateUtc": iso_datetime(end),
        "endTimeUtc": hh_mm_ss(end),
        "startDateLocal": iso_datetime(start - start.rem_euclid(86_400)).trim_end_matches('Z'),
        "startTimeLocal": hh_mm_ss(start + 3600),
        "endDateLocal": iso_datetime(end + 3600).trim_end_matches('Z'),
        "endTimeLocal": hh_mm_ss(end + 3600),
        "timezone": "Europe/Berlin",
        "duration": duration,
        "breakDuration": 0,
        "typeOfWorkId": guid(KIND_FIXED, 300 + work),
        "userId": user_id,
        "createdBy": user_id,
        "createdOn": iso_datetime(end),
        "updatedBy": user_id,
        "updatedOn": iso_datetime(end),
        "typeOfWork": {
            "id": guid(KIND_FIXED, 300 + work),
            "name": pick(&TYPES_OF_WORK, work),
            "icon": "work",
            "isArchived": false,
        },
        "user": nested_user(user_index),
        "task": {
            "id": task_id,
            "name": format!("Task {}", index / 4 + 1),
            "baseType": "projecttask",
            "projectId": project["id"],
        },
        "project": {
            "id": project["id"],
            "name": project["name"],
            "projectKey": project["projectKey"],
            "company": project["company"],
            "isPrivate": false,
            "hasImage": false,
            "isExternal": false,
            "isBillableByDefault": project["isBillableByDefault"],
        },
        "breaks": [],
        "resourceVersion": 1,
        "isExternal": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_calendar_correct() {
        assert_eq!(iso_datetime(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_datetime(EPOCH_2024), "2024-01-01T00:00:00Z");
        assert_eq!(iso_datetime(1_709_210_096), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn guids_are_stable_distinct_and_well_formed() {
        assert_eq!(guid(KIND_USER, 5), guid(KIND_USER, 5));
        assert_ne!(guid(KIND_USER, 5), guid(KIND_PROJECT, 5));
        let g = guid(KIND_PROJECT, 42);
        let parts: Vec<usize> = g.split('-').map(str::len).collect();
        assert_eq!(parts, vec![8, 4, 4, 4, 12]);
        assert_eq!(&g[14..15], "4");
    }

    #[test]
    fn first_user_is_ada_and_me_reads_the_name() {
        assert_eq!(user(0)["lastName"], "Lovelace");
        let me = me("Grace Brewster Hopper");
        assert_eq!(me["firstName"], "Grace");
        assert_eq!(me["lastName"], "Brewster Hopper");
        assert_eq!(me["email"], "grace.brewsterhopper@example.com");
    }
}
