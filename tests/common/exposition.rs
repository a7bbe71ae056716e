//! A strict reader of the Prometheus text exposition format (0.0.4), stricter than Prometheus
//! itself, for checking what `/metrics` serves: every family is declared by exactly one
//! `# HELP` and one `# TYPE` line before its samples, and its samples are contiguous; every
//! sample belongs to a declared family (a counter's name ends in `_total`; a histogram's
//! samples are `_bucket` with `le`, `_sum` and `_count`); names and label names are valid; a
//! sample (name and labels) appears once; label values use only the format's escapes; a
//! histogram has increasing bounds, non-decreasing cumulative counts, a `+Inf` bucket equal
//! to its `_count`, and a `_sum`. Counters are never negative.

use std::collections::{BTreeMap, BTreeSet};

/// A family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One sample: its full name, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One family.
#[derive(Debug, Clone)]
pub struct Family {
    pub kind: Kind,
    pub help: String,
    pub samples: Vec<Sample>,
}

/// A whole exposition, by family name.
#[derive(Debug, Default)]
pub struct Exposition {
    pub families: BTreeMap<String, Family>,
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if s.is_empty() || s.starts_with('+') && s.len() == 1 => Err(format!("bad value {s:?}")),
        _ if s
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')) =>
        {
            s.parse::<f64>()
                .map_err(|e| format!("bad value {s:?}: {e}"))
        }
        _ => Err(format!("bad value {s:?}")),
    }
}

/// Parses `{a="x",b="y"}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("no '=' in labels: {s}"))?;
        let name = &rest[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name} value is not quoted"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated value of label {name}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape in label {name}: {other:?}")),
                },
                Some((_, '\n')) => return Err(format!("raw newline in label {name}")),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} given twice"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err(format!("expected ',' or '}}' after label {name}: {rest}"));
        }
    }
}

/// The family a sample name belongs to, given the families declared so far.
fn family_of<'a>(name: &str, declared: &'a BTreeMap<String, Family>) -> Option<&'a str> {
    if let Some((k, f)) = declared.get_key_value(name) {
        return (f.kind != Kind::Histogram).then_some(k.as_str());
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some((k, f)) = declared.get_key_value(base)
            && f.kind == Kind::Histogram
        {
            return Some(k.as_str());
        }
    }
    None
}

impl Exposition {
    /// Parses and checks `text`; the error names the line.
    pub fn parse(text: &str) -> Result<Exposition, String> {
        let mut exp = Exposition::default();
        let mut helps: BTreeMap<String, String> = BTreeMap::new();
        let mut finished: BTreeSet<String> = BTreeSet::new();
        let mut current: Option<String> = None;
        let mut seen: BTreeSet<(String, Vec<(String, String)>)> = BTreeSet::new();
        if !text.is_empty() && !text.ends_with('\n') {
            return Err("the exposition does not end with a newline".into());
        }
        for (n, line) in text.lines().enumerate() {
            let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
            if line.is_empty() {
                return Err(at("empty line".into()));
            }
            let mut switch_to = |family: &str, current: &mut Option<String>| {
                if current.as_deref() != Some(family) {
                    if let Some(old) = current.take() {
                        finished.insert(old);
                    }
                    if finished.contains(family) {
                        return Err(format!("family {family} continues after another began"));
                    }
                    *current = Some(family.to_owned());
                }
                Ok(())
            };
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                if !valid_name(name) {
                    return Err(at(format!("bad metric name {name:?}")));
                }
                if helps.insert(name.to_owned(), help.to_owned()).is_some() {
                    return Err(at(format!("second HELP for {name}")));
                }
                switch_to(name, &mut current).map_err(at)?;
                if exp
                    .families
                    .get(name)
                    .is_some_and(|f| !f.samples.is_empty())
                {
                    return Err(at(format!("HELP for {name} after its samples")));
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| at("TYPE without a type".into()))?;
                if !valid_name(name) {
                    return Err(at(format!("bad metric name {name:?}")));
                }
                let kind = match kind {
                    "counter" => Kind::Counter,
                    "gauge" => Kind::Gauge,
                    "histogram" => Kind::Histogram,
                    other => return Err(at(format!("type {other:?} not expected here"))),
                };
                if kind == Kind::Counter && !name.ends_with("_total") {
                    return Err(at(format!("counter {name} does not end in _total")));
                }
                if exp.families.contains_key(name) {
                    return Err(at(format!("second TYPE for {name}")));
                }
                switch_to(name, &mut current).map_err(at)?;
                exp.families.insert(
                    name.to_owned(),
                    Family {
                        kind,
                        help: String::new(),
                        samples: Vec::new(),
                    },
                );
                continue;
            }
            if line.starts_with('#') {
                return Err(at("a comment other than HELP or TYPE".into()));
            }
            let name_end = line
                .find(['{', ' '])
                .ok_or_else(|| at("a sample without a value".into()))?;
            let name = &line[..name_end];
            if !valid_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end..]).map_err(at)?
            } else {
                (BTreeMap::new(), &line[name_end..])
            };
            let mut fields = rest
                .strip_prefix(' ')
                .ok_or_else(|| at("no space before the value".into()))?
                .split(' ');
            let value = parse_value(fields.next().unwrap_or_default()).map_err(at)?;
            if let Some(ts) = fields.next()
                && ts.parse::<i64>().is_err()
            {
                return Err(at(format!("bad timestamp {ts:?}")));
            }
            if fields.next().is_some() {
                return Err(at("trailing fields".into()));
            }
            let family = family_of(name, &exp.families)
                .ok_or_else(|| at(format!("sample {name} of no declared family")))?
                .to_owned();
            switch_to(&family, &mut current).map_err(at)?;
            let f = exp.families.get_mut(&family).expect("declared");
            if f.kind == Kind::Counter && (value.is_nan() || value < 0.0) {
                return Err(at(format!("counter {name} is {value}")));
            }
            if name.ends_with("_bucket") && f.kind == Kind::Histogram {
                if !labels.contains_key("le") {
                    return Err(at("a bucket without le".into()));
                }
            } else if labels.contains_key("le") {
                return Err(at("le on a sample that is not a bucket".into()));
            }
            let key = (
                name.to_owned(),
                labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            );
            if !seen.insert(key) {
                return Err(at(format!("sample {name} with these labels appears twice")));
            }
            f.samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        for (name, f) in &mut exp.families {
            f.help = helps
                .remove(name)
                .ok_or_else(|| format!("family {name} has no HELP"))?;
            if f.kind == Kind::Histogram {
                check_histogram(name, f)?;
            }
        }
        if let Some(name) = helps.keys().next() {
            return Err(format!("HELP for {name} without a TYPE"));
        }
        Ok(exp)
    }

    /// The value of the sample `name` whose labels are exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.families
            .values()
            .flat_map(|f| &f.samples)
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// [`Exposition::value`], panicking with the family's samples when it is missing.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or_else(|| {
            let near: Vec<String> = self
                .families
                .values()
                .flat_map(|f| &f.samples)
                .filter(|s| s.name == name)
                .map(|s| format!("{:?} {}", s.labels, s.value))
                .collect();
            panic!("no sample {name} {labels:?}; samples of that name: {near:?}")
        })
    }

    /// The family `name`'s type.
    pub fn kind(&self, name: &str) -> Option<Kind> {
        self.families.get(name).map(|f| f.kind)
    }
}

/// A histogram's samples, per label set without `le`.
fn check_histogram(name: &str, f: &Family) -> Result<(), String> {
    type Series = (Vec<(f64, f64)>, Option<f64>, Option<f64>);
    let mut series: BTreeMap<Vec<(String, String)>, Series> = BTreeMap::new();
    for s in &f.samples {
        let key: Vec<(String, String)> = s
            .labels
            .iter()
            .filter(|(k, _)| *k != "le")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let e = series.entry(key).or_default();
        if s.name.ends_with("_bucket") {
            let le = parse_value(&s.labels["le"]).map_err(|e| format!("{name}: le: {e}"))?;
            e.0.push((le, s.value));
        } else if s.name.ends_with("_sum") {
            e.1 = Some(s.value);
        } else {
            e.2 = Some(s.value);
        }
    }
    if series.is_empty() {
        return Err(format!("histogram {name} has no samples"));
    }
    for (labels, (buckets, sum, count)) in series {
        let at = format!("histogram {name} {labels:?}");
        for w in buckets.windows(2) {
            if w[0].0.partial_cmp(&w[1].0) != Some(std::cmp::Ordering::Less) {
                return Err(format!("{at}: bucket bounds not increasing: {w:?}"));
            }
            if w[0].1.is_nan() || w[1].1.is_nan() || w[0].1 > w[1].1 {
                return Err(format!("{at}: cumulative counts decrease: {w:?}"));
            }
        }
        let inf = buckets
            .last()
            .filter(|(le, _)| *le == f64::INFINITY)
            .ok_or_else(|| format!("{at}: no +Inf bucket"))?
            .1;
        sum.ok_or_else(|| format!("{at}: no _sum"))?;
        let count = count.ok_or_else(|| format!("{at}: no _count"))?;
        if count != inf {
            return Err(format!(
                "{at}: _count {count} differs from the +Inf bucket {inf}"
            ));
        }
    }
    Ok(())
}

/// `GET /metrics` from `addr` over a fresh connection: the whole answer, headers included.
pub async fn get_metrics(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut raw = String::new();
    tokio::time::timeout(crate::common::WAIT, s.read_to_string(&mut raw))
        .await
        .expect("answered in time")
        .expect("read");
    raw
}

/// `GET /metrics` from `addr` over a fresh connection: the body of a 200 answer in the
/// Prometheus text format, checked with [`Exposition::parse`]. Panics otherwise.
pub async fn scrape(addr: &str) -> (String, Exposition) {
    let raw = get_metrics(addr).await;
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.lines().any(|l| l
            .to_ascii_lowercase()
            .starts_with("content-type: text/plain; version=0.0.4")),
        "not the Prometheus text format: {head}"
    );
    let exp = Exposition::parse(body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    (body.to_owned(), exp)
}
