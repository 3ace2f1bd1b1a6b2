//! The frame every console page shares: the head (the embedded stylesheet, a phone-width
//! viewport), the navigation, who is signed in, and error pages.

use maud::{DOCTYPE, Markup, html};

/// A page titled `title` for `who` (the caller's name), with `body` as its content.
pub fn page(title: &str, who: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Keyward" }
                link rel="stylesheet" href=(super::STYLESHEET_PATH);
                link rel="icon" type="image/svg+xml" href=(super::ICON_PATH);
            }
            body {
                header {
                    a.brand href="/ui/runs" { "Keyward" }
                    nav aria-label="Main" {
                        a href="/ui/runs" { "Runs" }
                        a href="/ui/stacks" { "Stacks" }
                        a href="/ui/agents" { "Agents" }
                        a href="/ui/audit" { "Audit" }
                        a href="/ui/policies" { "Policies" }
                    }
                    @if let Some(who) = who {
                        span.who { "Signed in as " (who) " · " a href="/ui/sign-out" { "Sign out" } }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// An error page: what went wrong and, when the caller is not signed in, how to.
pub fn error(title: &str, message: &str, sign_in: Option<&str>) -> Markup {
    let body = html! {
        h1 { (title) }
        p { (message) }
        @if let Some(url) = sign_in {
            p { a href=(url) { "Sign in" } }
        } @else if title == UNAUTHENTICATED {
            p.muted {
                "Send your API token as " code { "Authorization: Bearer kw_…" }
                ", or configure sign-in for people (" code { "[sso]" } ", docs/access.md)."
            }
        }
    };
    page(title, None, body)
}

/// The title of the page shown to a caller who is not signed in.
pub const UNAUTHENTICATED: &str = "Sign in to Keyward";
