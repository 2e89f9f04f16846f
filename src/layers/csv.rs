//! CSV for BI tools: `Accept: text/csv` (or `format=csv`, which awork never sees) turns a
//! JSON answer into RFC 4180 CSV as it streams: one row per item of an array (a whole list
//! too), one row for an object. Error answers stay JSON.
//!
//! Nested objects become dotted columns (`company.name`), arrays and objects without columns
//! of their own their JSON text. A CSV header cannot change once rows are out, so the columns
//! are settled by the first `SETTLE_ITEMS` items: every path seen there, in the order first
//! seen. A later item's value at a path without a column is left out (and logged), unless a
//! column holds its parent object, which then gets that object's JSON text.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body::{Body, Frame};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use tower::{BoxError, Layer, Service};

use super::{Decision, GatewayRequest, GatewayResponse, request_id_of, take_ready};
use crate::body::GatewayBody;
use crate::error::GatewayError;

/// The columns are the paths seen in this many first items (one page of a whole list).
pub const SETTLE_ITEMS: usize = 1000;

const TEXT_CSV: &str = "text/csv; charset=utf-8";

#[derive(Debug, Clone, Default)]
pub struct CsvLayer;

impl<S> Layer<S> for CsvLayer {
    type Service = ToCsv<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ToCsv { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ToCsv<S> {
    inner: S,
}

impl<S> Service<GatewayRequest> for ToCsv<S>
where
    S: Service<GatewayRequest, Response = GatewayResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = Decision<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: GatewayRequest) -> Self::Future {
        let by_query = query_asks_csv(req.uri().query());
        if !by_query && !accepts_csv(&req) {
            return Decision::Inner { future: self.inner.call(req) };
        }
        let request_id = request_id_of(&req).to_owned();
        if by_query && let Err(e) = drop_format_param(req.uri_mut()) {
            return Decision::answer(e.to_response(&request_id));
        }
        // awork answers JSON, uncompressed: it is read here.
        req.headers_mut().insert(ACCEPT, HeaderValue::from_static("application/json"));
        req.headers_mut().remove(ACCEPT_ENCODING);
        let answer = take_ready(&mut self.inner).call(req);
        Decision::Later { future: Box::pin(async move { Ok(to_csv(answer.await?, request_id)) }) }
    }
}

fn query_pairs(query: Option<&str>) -> impl Iterator<Item = &str> {
    query.unwrap_or("").split('&').filter(|pair| !pair.is_empty())
}

fn is_format_csv(pair: &str) -> bool {
    pair.split_once('=')
        .is_some_and(|(key, value)| key.eq_ignore_ascii_case("format") && value.eq_ignore_ascii_case("csv"))
}

fn query_asks_csv(query: Option<&str>) -> bool {
    query_pairs(query).any(is_format_csv)
}

/// `Accept` names `text/csv` (with a quality above 0).
fn accepts_csv<B>(req: &Request<B>) -> bool {
    req.headers().get_all(ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|range| {
        let mut parts = range.split(';').map(str::trim);
        parts.next().is_some_and(|media| media.eq_ignore_ascii_case("text/csv"))
            && !parts.any(|param| param.replace(' ', "").eq_ignore_ascii_case("q=0"))
    })
}

/// Removes `format=csv` from the query: it is the gateway's, not awork's.
fn drop_format_param(uri: &mut Uri) -> Result<(), GatewayError> {
    let rest: Vec<&str> = query_pairs(uri.query()).filter(|pair| !is_format_csv(pair)).collect();
    let target = if rest.is_empty() { uri.path().to_owned() } else { format!("{}?{}", uri.path(), rest.join("&")) };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(target).map_err(|e| GatewayError::BadRequest(e.to_string()))?);
    *uri = Uri::from_parts(parts).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    Ok(())
}

/// The CSV answer for a successful JSON one; anything else as it is, or 406 for a successful
/// answer that is not JSON (a file, an event stream).
fn to_csv(response: GatewayResponse, request_id: String) -> GatewayResponse {
    if !response.status().is_success() || response.status() == StatusCode::NO_CONTENT || response.body().is_end_stream()
    {
        return response;
    }
    let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !is_json(content_type) || response.headers().get(CONTENT_ENCODING).is_some_and(|e| e != "identity") {
        let why = format!("CSV was asked for, but awork answered {content_type:?}, which is not JSON");
        return GatewayError::NotAcceptable(why).to_response(&request_id);
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.remove(ETAG);
    parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_CSV));
    let csv = CsvBody { inner: body, items: Items::default(), table: Table::default(), request_id, done: false };
    GatewayResponse::from_parts(parts, GatewayBody::made(csv))
}

/// `application/json` or any `+json` type.
fn is_json(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    media == "application/json" || media.ends_with("+json")
}

/// The answer's JSON was not what it claimed.
#[derive(Debug, thiserror::Error)]
#[error("the JSON answer could not be turned into CSV: {0}")]
struct NotJson(String);

/// The CSV body, written as the JSON body arrives.
struct CsvBody {
    inner: GatewayBody,
    items: Items,
    table: Table,
    request_id: String,
    done: bool,
}

impl CsvBody {
    fn fail(&mut self, reason: String) -> BoxError {
        self.done = true;
        tracing::warn!(request_id = self.request_id, %reason, "CSV answer broken off");
        Box::new(NotJson(reason))
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let table = &mut self.table;
        self.items.finish(&mut |item| table.item(item, out))?;
        table.settle(out)?;
        if !table.dropped.is_empty() {
            tracing::warn!(
                request_id = self.request_id,
                left_out = ?table.dropped,
                "CSV: values at paths not among the columns (settled by the first {SETTLE_ITEMS} items) were left out"
            );
        }
        Ok(())
    }
}

impl Body for CsvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let mut out = Vec::new();
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else { continue };
                    let table = &mut this.table;
                    if let Err(reason) = this.items.feed(&data, &mut |item| table.item(item, &mut out)) {
                        return Poll::Ready(Some(Err(this.fail(reason))));
                    }
                }
                Poll::Ready(None) => {
                    if let Err(reason) = this.finish(&mut out) {
                        return Poll::Ready(Some(Err(this.fail(reason))));
                    }
                    this.done = true;
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

// === impl Items ===

/// Where the splitter is in the JSON text.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Before the first byte that is not whitespace.
    #[default]
    Start,
    /// Not an array: the whole text is one item.
    Single,
    /// Inside the top-level array, expecting an item or `]`.
    FirstItem,
    /// After a `,`: an item must follow.
    Item,
    /// Inside an item.
    InItem,
    /// After an item: `,` or `]`.
    AfterItem,
    /// After the closing `]`.
    End,
}

/// Cuts a JSON text into its top-level array's items as the bytes arrive (or the whole text
/// when it is not an array), holding one item at a time.
#[derive(Debug, Default)]
struct Items {
    place: Place,
    item: Vec<u8>,
    /// Open `{`/`[` inside the current item.
    depth: u32,
    in_string: bool,
    escaped: bool,
}

type OnItem<'a> = dyn FnMut(&[u8]) -> Result<(), String> + 'a;

impl Items {
    fn feed(&mut self, chunk: &[u8], on_item: &mut OnItem<'_>) -> Result<(), String> {
        if self.place == Place::Single {
            self.item.extend_from_slice(chunk);
            return Ok(());
        }
        let mut i = 0;
        let mut item_from = 0;
        while i < chunk.len() {
            let b = chunk[i];
            match self.place {
                Place::Start if b.is_ascii_whitespace() => {}
                Place::Start if b == b'[' => self.place = Place::FirstItem,
                Place::Start | Place::Single => {
                    self.place = Place::Single;
                    self.item.extend_from_slice(&chunk[i..]);
                    return Ok(());
                }
                Place::FirstItem | Place::Item | Place::AfterItem | Place::End if b.is_ascii_whitespace() => {}
                Place::FirstItem if b == b']' => self.place = Place::End,
                Place::FirstItem | Place::Item => {
                    if b == b']' || b == b',' {
                        return Err(format!("unexpected {:?} where an array item belongs", char::from(b)));
                    }
                    self.place = Place::InItem;
                    self.depth = 0;
                    self.in_string = false;
                    self.escaped = false;
                    item_from = i;
                    continue;
                }
                Place::AfterItem if b == b',' => self.place = Place::Item,
                Place::AfterItem if b == b']' => self.place = Place::End,
                Place::AfterItem => return Err(format!("unexpected {:?} after an array item", char::from(b))),
                Place::End => return Err("data after the end of the array".into()),
                Place::InItem => {
                    // Where the item ends: after this byte (`"` `}` `]` closing it) or before it.
                    let end = if self.in_string {
                        if self.escaped {
                            self.escaped = false;
                        } else if b == b'\\' {
                            self.escaped = true;
                        } else if b == b'"' {
                            self.in_string = false;
                        }
                        (!self.in_string && self.depth == 0).then_some(i + 1)
                    } else {
                        match b {
                            b'"' => {
                                self.in_string = true;
                                None
                            }
                            b'{' | b'[' => {
                                self.depth += 1;
                                None
                            }
                            b'}' | b']' if self.depth > 0 => {
                                self.depth -= 1;
                                (self.depth == 0).then_some(i + 1)
                            }
                            b',' | b']' | b'}' if self.depth == 0 => Some(i),
                            _ if b.is_ascii_whitespace() && self.depth == 0 => Some(i),
                            _ => None,
                        }
                    };
                    if let Some(end) = end {
                        self.item.extend_from_slice(&chunk[item_from..end]);
                        on_item(&self.item)?;
                        self.item.clear();
                        self.place = Place::AfterItem;
                        // A byte that ended a scalar item is read again as what follows it.
                        if end == i {
                            continue;
                        }
                    }
                }
            }
            i += 1;
        }
        if self.place == Place::InItem {
            self.item.extend_from_slice(&chunk[item_from..]);
        }
        Ok(())
    }

    fn finish(&mut self, on_item: &mut OnItem<'_>) -> Result<(), String> {
        match self.place {
            Place::Start | Place::End => Ok(()),
            Place::Single => on_item(&self.item),
            _ => Err("the JSON array ended early".into()),
        }
    }
}

// === impl Table ===

/// The columns and the rows written under them.
#[derive(Debug, Default)]
struct Table {
    columns: Option<Columns>,
    /// The first items, held until the columns are settled.
    waiting: Vec<Vec<u8>>,
    /// Values left out, per path: their path had no column.
    dropped: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct Columns {
    index: HashMap<String, usize>,
}

impl Table {
    fn item(&mut self, item: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        match &self.columns {
            Some(columns) => row(columns, item, out, &mut self.dropped),
            None => {
                self.waiting.push(item.to_vec());
                if self.waiting.len() >= SETTLE_ITEMS { self.settle(out) } else { Ok(()) }
            }
        }
    }

    /// Fixes the columns from the items held so far and writes the header and their rows.
    fn settle(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        if self.columns.is_some() || self.waiting.is_empty() {
            return Ok(());
        }
        let mut names: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for item in &self.waiting {
            walk_item(item, &mut |path, node| {
                if let Node::Leaf(_) = node
                    && seen.insert(path.to_owned())
                {
                    names.push(path.to_owned());
                }
                true
            })?;
        }
        // `company` (null in some items) gives way to `company.name` (of an object in others).
        let parents: Vec<bool> = names
            .iter()
            .map(|name| {
                names.iter().any(|other| {
                    other.len() > name.len() && other.starts_with(name.as_str()) && other.as_bytes()[name.len()] == b'.'
                })
            })
            .collect();
        let names: Vec<String> = names.into_iter().zip(parents).filter(|(_, parent)| !parent).map(|(n, _)| n).collect();
        write_row(out, names.iter().map(String::as_str));
        let columns = Columns { index: names.into_iter().enumerate().map(|(i, n)| (n, i)).collect() };
        for item in std::mem::take(&mut self.waiting) {
            row(&columns, &item, out, &mut self.dropped)?;
        }
        self.columns = Some(columns);
        Ok(())
    }
}

/// One item's row under `columns`.
fn row(columns: &Columns, item: &[u8], out: &mut Vec<u8>, dropped: &mut BTreeMap<String, u64>) -> Result<(), String> {
    let mut cells: Vec<String> = vec![String::new(); columns.index.len()];
    let mut failed = None;
    walk_item(item, &mut |path, node| {
        let column = columns.index.get(path).copied();
        match (node, column) {
            (Node::Object(raw), Some(i)) => {
                cells[i] = raw.get().to_owned();
                false
            }
            (Node::Object(_), None) => true,
            (Node::Leaf(raw), Some(i)) => {
                match cell(raw) {
                    Ok(text) => cells[i] = text,
                    Err(e) => failed = Some(e),
                }
                false
            }
            (Node::Leaf(raw), None) => {
                if raw.get() != "null" {
                    *dropped.entry(path.to_owned()).or_default() += 1;
                }
                false
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    write_row(out, cells.iter().map(String::as_str));
    Ok(())
}

/// A leaf's cell: a string's text, null as nothing, numbers, booleans and arrays as JSON.
fn cell(raw: &RawValue) -> Result<String, String> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str(text).map_err(|e| e.to_string()),
        Some(b'n') => Ok(String::new()),
        _ => Ok(text.to_owned()),
    }
}

/// RFC 4180: fields separated by `,`, rows ended by CRLF; a field holding `,` `"` CR or LF is
/// quoted, its quotes doubled.
fn write_row<'a>(out: &mut Vec<u8>, fields: impl Iterator<Item = &'a str>) {
    for (i, field) in fields.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if field.bytes().any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n')) {
            out.push(b'"');
            for b in field.bytes() {
                if b == b'"' {
                    out.push(b'"');
                }
                out.push(b);
            }
            out.push(b'"');
        } else {
            out.extend_from_slice(field.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

// === walking JSON ===

enum Node<'a> {
    Object(&'a RawValue),
    Leaf(&'a RawValue),
}

/// Visits an item's values in document order with their dotted paths: an object item's
/// members, or the item itself as `value` when it is not an object. `visit` answers whether
/// to go into an object.
fn walk_item(item: &[u8], visit: &mut dyn FnMut(&str, Node<'_>) -> bool) -> Result<(), String> {
    let raw: &RawValue = serde_json::from_slice(item).map_err(|e| e.to_string())?;
    let mut path = String::new();
    if is_object(raw) {
        walk_members(raw, &mut path, visit)
    } else {
        visit("value", Node::Leaf(raw));
        Ok(())
    }
}

fn walk_members(
    object: &RawValue,
    path: &mut String,
    visit: &mut dyn FnMut(&str, Node<'_>) -> bool,
) -> Result<(), String> {
    let Members(members) = serde_json::from_str(object.get()).map_err(|e| e.to_string())?;
    for (key, value) in members {
        let len = path.len();
        if len > 0 {
            path.push('.');
        }
        path.push_str(&key);
        if is_object(value) {
            if visit(path, Node::Object(value)) {
                walk_members(value, path, visit)?;
            }
        } else {
            visit(path, Node::Leaf(value));
        }
        path.truncate(len);
    }
    Ok(())
}

fn is_object(raw: &RawValue) -> bool {
    raw.get().starts_with('{')
}

/// An object's members in document order (a map would sort them).
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CSV of `json` fed in chunks of `chunk` bytes.
    fn csv_of(json: &str, chunk: usize) -> Result<String, String> {
        let (mut items, mut table, mut out) = (Items::default(), Table::default(), Vec::new());
        for part in json.as_bytes().chunks(chunk) {
            items.feed(part, &mut |item| table.item(item, &mut out))?;
        }
        items.finish(&mut |item| table.item(item, &mut out))?;
        table.settle(&mut out)?;
        Ok(String::from_utf8(out).expect("utf-8"))
    }

    #[test]
    fn items_become_rows_under_dotted_columns_whatever_the_chunks() {
        let json = r#" [ {"id": 1, "name": "Ada, \"the\" first", "company": {"name": "X\r\nY", "tags": [1, {"a": 2}]}},
            {"id": 2, "name": "B\\]", "company": null, "extra": true} ] "#;
        let expected = "id,name,company.name,company.tags,extra\r\n\
                        1,\"Ada, \"\"the\"\" first\",\"X\r\nY\",\"[1, {\"\"a\"\": 2}]\",\r\n\
                        2,B\\],,,true\r\n";
        for chunk in [1, 2, 3, 7, 1000] {
            assert_eq!(csv_of(json, chunk).as_deref(), Ok(expected), "chunks of {chunk}");
        }
    }

    #[test]
    fn an_object_is_one_row_and_scalars_are_a_value_column() {
        assert_eq!(csv_of(r#"{"a": {"b": "c"}, "d": []}"#, 4).as_deref(), Ok("a.b,d\r\nc,[]\r\n"));
        assert_eq!(csv_of(r#"["x", 2, null]"#, 1).as_deref(), Ok("value\r\nx\r\n2\r\n\r\n"));
        assert_eq!(csv_of("[]", 1).as_deref(), Ok(""));
    }

    #[test]
    fn broken_json_is_an_error() {
        for json in ["[1,,2]", "[1 2]", "[1,", "[{\"a\": }]", "[1] x", "[,1]"] {
            assert!(csv_of(json, 1).is_err(), "{json}");
        }
    }
}
