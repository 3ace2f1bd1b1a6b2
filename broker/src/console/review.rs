//! The run page's review form and the sign-out page: plain HTML forms posting back to the
//! broker, each carrying the session's CSRF token in a hidden field ([`super::CSRF_FIELD`]).
//!
//! A run's author sees no approve button: their approval would be recorded but never count
//! (`runs::reviews`), and the console refuses it outright.

use maud::{Markup, html};

use super::layout::page;

/// What the review form needs to know about the run and the viewer.
#[derive(Debug, Clone, Copy)]
pub struct Reviewing<'a> {
    /// The run.
    pub run_id: &'a str,
    /// Whether the run waits for reviews now.
    pub open: bool,
    /// Whether the viewer holds the reviewer role in the run's space.
    pub may_review: bool,
    /// Whether the viewer submitted the run.
    pub author: bool,
    /// Whether the viewer already reviewed it.
    pub reviewed: bool,
    /// The viewer's CSRF token (empty for a caller authenticated by a bearer token).
    pub csrf: &'a str,
}

/// The form, or why there is none.
pub fn form(reviewing: &Reviewing<'_>) -> Markup {
    html! {
        @if !reviewing.open {
        } @else if !reviewing.may_review {
            p.muted { "This run waits for a review; reviewing needs the reviewer role in its space." }
        } @else if reviewing.reviewed {
            p.muted { "You reviewed this run." }
        } @else {
            form.review method="post" action=(format!("/ui/runs/{}/review", reviewing.run_id)) {
                input type="hidden" name=(super::CSRF_FIELD) value=(reviewing.csrf);
                label for="comment" { "Comment (optional)" }
                textarea #comment name="comment" rows="2" maxlength="2000" {}
                div.actions {
                    @if reviewing.author {
                        p.note { "You submitted this run: your approval would not count. Another reviewer must approve it." }
                    } @else {
                        button.approve type="submit" name="decision" value="approve" { "Approve" }
                    }
                    button.reject type="submit" name="decision" value="reject" { "Reject" }
                }
            }
        }
    }
}

/// The sign-out page: one button (a form, so the CSRF token goes with it).
pub fn sign_out(csrf: &str, who: &str) -> Markup {
    let body = html! {
        h1 { "Sign out" }
        form method="post" action="/ui/sign-out" {
            input type="hidden" name=(super::CSRF_FIELD) value=(csrf);
            button type="submit" { "Sign out of this browser" }
        }
    };
    page("Sign out", Some(who), body)
}

/// What a browser sees once signed out.
pub fn signed_out() -> Markup {
    page("Signed out", None, html! { h1 { "Signed out" } p { "This browser's session has ended." } })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reviewing() -> Reviewing<'static> {
        Reviewing { run_id: "r-1", open: true, may_review: true, author: false, reviewed: false, csrf: "tok\"<" }
    }

    #[test]
    fn a_reviewer_gets_both_buttons_and_the_escaped_token() {
        let html = form(&reviewing()).into_string();
        assert!(html.contains(r#"action="/ui/runs/r-1/review""#), "{html}");
        assert!(html.contains(r#"name="csrf" value="tok&quot;&lt;""#), "{html}");
        assert!(html.contains(r#"value="approve""#) && html.contains(r#"value="reject""#));
    }

    #[test]
    fn the_author_cannot_approve() {
        let html = form(&Reviewing { author: true, ..reviewing() }).into_string();
        assert!(!html.contains(r#"value="approve""#), "{html}");
        assert!(html.contains(r#"value="reject""#) && html.contains("would not count"));
    }

    #[test]
    fn no_form_when_closed_not_allowed_or_done() {
        assert_eq!(form(&Reviewing { open: false, ..reviewing() }).into_string(), "");
        for closed in [Reviewing { may_review: false, ..reviewing() }, Reviewing { reviewed: true, ..reviewing() }] {
            let html = form(&closed).into_string();
            assert!(!html.contains("<form"), "{html}");
        }
    }
}
