//! Parsing: TOML text to typed sections, keeping where every value came from.

use std::ops::Range;

use serde::Deserialize;
use serde::de::IntoDeserializer;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{
    Config, Location, PluginConfig, Problem, Problems, RouteTable, ServerConfig, TokenSetConfig,
    validate,
};

/// Parses `text` section by section, then validates the result.
pub(super) fn parse(text: &str) -> Result<Config, Problems> {
    let mut sink = Sink::new(text);
    let (document, syntax_errors) = DeTable::parse_recoverable(text);
    for error in &syntax_errors {
        sink.toml_error(error, 0..0);
    }
    if !syntax_errors.is_empty() {
        // The tree after a syntax error is a guess; checking it would only
        // produce confusing follow-up problems.
        return Err(sink.finish());
    }

    let mut config = Config::default();
    let mut tables = Vec::new();
    let mut route_values = Vec::new();
    for (key, value) in document.get_ref().iter() {
        match key.get_ref().as_ref() {
            "server" => {
                if let Some(mut server) = sink.deserialize::<ServerConfig>(value) {
                    if let Some(tls) = server.tls.as_mut() {
                        let span = field(value, "tls").unwrap_or_else(|| value.span());
                        tls.location = sink.location(span.start);
                    }
                    config.server = server;
                }
            }
            "jobs" => {
                if let Some(jobs) = sink.deserialize(value) {
                    config.jobs = Some(jobs);
                }
            }
            "dns" => {
                if let Some(dns) = sink.deserialize(value) {
                    config.dns = dns;
                }
            }
            "kubernetes" => {
                if let Some(kubernetes) = sink.deserialize(value) {
                    config.kubernetes = kubernetes;
                }
            }
            "tokens" => match value.get_ref() {
                DeValue::Table(sets) => {
                    for (name, set) in sets.iter() {
                        if let Some(mut parsed) = sink.deserialize::<TokenSetConfig>(set) {
                            parsed.location = sink.location(name.span().start);
                            config.tokens.insert(name.get_ref().to_string(), parsed);
                        }
                    }
                }
                _ => sink.push(
                    value.span(),
                    "`tokens` must be a table of tables, written as [tokens.NAME] sections",
                ),
            },
            "plugins" => match value.get_ref() {
                DeValue::Table(plugins) => {
                    for (name, plugin) in plugins.iter() {
                        if let Some(mut parsed) = sink.deserialize::<PluginConfig>(plugin) {
                            parsed.location = sink.location(name.span().start);
                            config.plugins.insert(name.get_ref().to_string(), parsed);
                        }
                    }
                }
                _ => sink.push(
                    value.span(),
                    "`plugins` must be a table of tables, written as [plugins.NAME] sections",
                ),
            },
            "routes" => match value.get_ref() {
                DeValue::Array(routes) => {
                    for (position, route) in routes.iter().enumerate() {
                        if let Some(mut parsed) = sink.deserialize::<RouteTable>(route) {
                            let span = field(route, "ca_file").unwrap_or_else(|| route.span());
                            parsed.location = sink.location(span.start);
                            for (item, plugin) in parsed.plugins.iter_mut().enumerate() {
                                let span = route_item_span(route, "plugins", item);
                                plugin.location = sink.location(span.start);
                            }
                            tables.push(parsed);
                            route_values.push((position, route));
                        }
                    }
                }
                _ => sink.push(
                    value.span(),
                    "`routes` must be an array of tables, written as [[routes]] sections",
                ),
            },
            other => sink.push(
                key.span(),
                format!(
                    "unknown top-level key `{other}`; expected `server`, `dns`, `kubernetes`, `jobs`, `tokens`, `plugins` or `routes`"
                ),
            ),
        }
    }

    let spans = Spans {
        root: document.get_ref(),
        routes: route_values,
    };
    config.routes = validate::validate(&config, tables, &spans, &mut sink);
    if sink.is_empty() {
        Ok(config)
    } else {
        Err(sink.finish())
    }
}

/// Finds the source position of configuration values for validation messages.
pub(super) struct Spans<'a> {
    root: &'a DeTable<'a>,
    /// The position in the file and TOML value of each successfully parsed
    /// route, in the order of the route tables.
    routes: Vec<(usize, &'a Spanned<DeValue<'a>>)>,
}

impl Spans<'_> {
    /// The span of `[section] key`, or of the section, or of the file start.
    pub(super) fn section(&self, section: &str, key: &str) -> Range<usize> {
        match self.root.get(section) {
            Some(table) => field(table, key).unwrap_or_else(|| table.span()),
            None => 0..0,
        }
    }

    /// The span of route `index`'s `key`, or of the route itself.
    pub(super) fn route(&self, index: usize, key: &str) -> Range<usize> {
        let route = self.routes[index].1;
        field(route, key).unwrap_or_else(|| route.span())
    }

    /// The 1-based position of route `index` among the file's `[[routes]]`
    /// (routes that failed to parse still count).
    pub(super) fn route_number(&self, index: usize) -> usize {
        self.routes[index].0 + 1
    }

    /// Whether route `index` sets `key` explicitly.
    pub(super) fn route_sets(&self, index: usize, key: &str) -> bool {
        field(self.routes[index].1, key).is_some()
    }

    /// The span of element `item` of route `index`'s array `key`.
    pub(super) fn route_item(&self, index: usize, key: &str, item: usize) -> Range<usize> {
        route_item_span(self.routes[index].1, key, item)
    }
}

/// The span of element `item` of a route's array `key`, or of the route.
fn route_item_span(route: &Spanned<DeValue<'_>>, key: &str, item: usize) -> Range<usize> {
    let element = table_value(route, key).and_then(|value| match value.get_ref() {
        DeValue::Array(array) => array.get(item).map(Spanned::span),
        _ => None,
    });
    element.unwrap_or_else(|| field(route, key).unwrap_or_else(|| route.span()))
}

fn table_value<'a>(value: &'a Spanned<DeValue<'a>>, key: &str) -> Option<&'a Spanned<DeValue<'a>>> {
    match value.get_ref() {
        DeValue::Table(table) => table.get(key),
        _ => None,
    }
}

fn field(value: &Spanned<DeValue<'_>>, key: &str) -> Option<Range<usize>> {
    table_value(value, key).map(Spanned::span)
}

/// Collects problems, turning byte offsets into lines and columns.
pub(super) struct Sink<'t> {
    text: &'t str,
    problems: Vec<(Range<usize>, String)>,
}

impl<'t> Sink<'t> {
    fn new(text: &'t str) -> Self {
        Self {
            text,
            problems: Vec::new(),
        }
    }

    /// Records a problem at `span`.
    pub(super) fn push(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.problems.push((span, message.into()));
    }

    fn toml_error(&mut self, error: &toml::de::Error, fallback: Range<usize>) {
        let message = error.message().trim_end().to_owned();
        self.push(error.span().unwrap_or(fallback), message);
    }

    /// Deserializes one section, recording its problem if it does not fit.
    fn deserialize<T: for<'de> Deserialize<'de>>(
        &mut self,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let span = value.span();
        match T::deserialize(value.clone().into_deserializer()) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                self.toml_error(&error, span);
                None
            }
        }
    }

    fn location(&self, offset: usize) -> Location {
        let (line, column) = line_column(self.text, offset);
        Location { line, column }
    }

    fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    fn finish(self) -> Problems {
        let mut problems: Vec<Problem> = self
            .problems
            .iter()
            .map(|(span, message)| {
                let (line, column) = line_column(self.text, span.start);
                Problem {
                    line,
                    column,
                    message: message.clone(),
                }
            })
            .collect();
        problems.sort_by_key(|problem| (problem.line, problem.column));
        problems.dedup();
        Problems(problems)
    }
}

/// The 1-based line and character column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::line_column;

    #[test]
    fn line_column_counts_from_one() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 10), (2, 4));
    }
}
