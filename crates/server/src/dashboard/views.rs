//! Shared pieces of every dashboard page: the layout (navigation, stale-data banner,
//! live region), badges, times and inline SVG sparklines. Rendering only; no queries.

use maud::{html, Markup, DOCTYPE};

use super::ASSET_VERSION;

/// The navigation entries: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/ui/deliveries", "Deliveries"),
    ("/ui/inbox", "Inbox"),
    ("/ui/conflicts", "Conflicts"),
    ("/ui/records", "Record path"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Syncflow" }
            link rel="stylesheet" href={ "/ui/assets/dashboard.css?v=" (ASSET_VERSION) };
        }
    }
}

/// A page without navigation or live updates (login, errors).
pub(crate) fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { (body) }
        }
    }
}

/// A full page. `live_url` is re-fetched on every `refresh` event and its `#live`
/// element replaces this page's; what lies outside `#live` (filter forms being
/// typed in) is left alone.
pub(crate) fn page(title: &str, here: &str, live_url: &str, logout: bool, before: Markup, live: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                div #stale role="alert" hidden {
                    "Stale: the hub has not answered since " time #stale-since {} ". The figures below are not live."
                }
                header {
                    span.brand { "Syncflow" }
                    nav {
                        @for (path, label) in NAV {
                            a.here[*path == here] href=(path) { (label) }
                        }
                    }
                    @if logout {
                        form.inline method="post" action="/ui/logout" { button type="submit" { "Log out" } }
                    }
                }
                main {
                    h1 { (title) }
                    (before)
                    div #live hx-get=(live_url) hx-trigger="refresh from:body" hx-select="#live" hx-swap="outerHTML" {
                        (live)
                        p.asof { "As of " time #asof { (now_text()) } }
                    }
                }
                script src={ "/ui/assets/htmx-2.0.11.min.js" } {}
                script src={ "/ui/assets/dashboard.js?v=" (ASSET_VERSION) } {}
            }
        }
    }
}

pub(crate) fn now_text() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// Epoch milliseconds as `YYYY-MM-DD HH:MM:SS`.
pub(crate) fn at(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// A duration in seconds as `45s`, `3m 12s`, `2h 5m`, `3d 4h`.
pub(crate) fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as i64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

pub(crate) fn badge(text: &str) -> Markup {
    html! { span class={ "badge " (text.replace(' ', "-")) } { (text) } }
}

/// An inline SVG sparkline of one or two series (same length), scaled together.
/// `series`: (values, colour, label).
pub(crate) fn sparkline(series: &[(&[i64], &str, &str)], title: &str) -> Markup {
    const W: f64 = 120.0;
    const H: f64 = 26.0;
    let max = series.iter().flat_map(|(v, _, _)| v.iter().copied()).max().unwrap_or(0).max(1) as f64;
    let points = |values: &[i64]| -> String {
        let step = if values.len() > 1 { W / (values.len() - 1) as f64 } else { W };
        values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", i as f64 * step, H - 1.0 - (*v as f64 / max) * (H - 2.0)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    html! {
        svg.spark width="120" height="26" viewBox="0 0 120 26" role="img" aria-label=(title) {
            title { (title) }
            @for (values, colour, label) in series {
                polyline points=(points(values)) fill="none" stroke=(colour) stroke-width="1.5" data-series=(label) {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(5.2), "5s");
        assert_eq!(age(192.0), "3m 12s");
        assert_eq!(age(7500.0), "2h 5m");
        assert_eq!(age(-3.0), "0s");
    }

    #[test]
    fn sparklines_scale_to_the_largest_value() {
        let svg = sparkline(&[(&[0, 5, 10], "#000", "ok")], "t").into_string();
        assert!(svg.contains(r#"points="0.0,25.0 60.0,13.0 120.0,1.0""#), "{svg}");
    }
}
