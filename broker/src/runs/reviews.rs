//! Which reviews count, and the run facts every credential carries.
//!
//! A review is a fact — who said what, when — and is always recorded. Whether it counts towards
//! approval is the broker's rule, not a policy's choice: the person who submitted a run never
//! approves it (DESIGN.md §8.8). Every place that names approvers — the approval policy's input,
//! run tokens, job credentials, AWS session tags and source identity, audit contexts, `run show`
//! and `audit trace` — takes them from [`counted_approvers`], read from the store when the
//! credential is issued, so nobody can assert an approval.

use crate::store::{ReviewRow, RunRow, Store, StoreError};

/// Why a review does not count.
const AUTHOR_APPROVAL: &str = "the run's author cannot approve it";

/// One review as judged: whether it counts, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged<'a> {
    /// The review as recorded.
    pub review: &'a ReviewRow,
    /// Whether the reviewer is the run's author.
    pub author: bool,
    /// Whether it counts towards approval (a rejection always does: anyone may stop a run).
    pub counted: bool,
    /// Why it does not count.
    pub note: Option<&'static str>,
}

/// Judges each review of a run submitted by `author`, in review order.
pub fn judge<'a>(author: &str, reviews: &'a [ReviewRow]) -> Vec<Judged<'a>> {
    reviews
        .iter()
        .map(|review| {
            let author = review.reviewer == author;
            let own_approval = author && review.decision == "approve";
            Judged { review, author, counted: !own_approval, note: own_approval.then_some(AUTHOR_APPROVAL) }
        })
        .collect()
}

/// Who approved a run submitted by `author`, in review order: the counted `approve` reviews.
pub fn counted_approvers(author: &str, reviews: &[ReviewRow]) -> Vec<String> {
    judge(author, reviews)
        .into_iter()
        .filter(|j| j.counted && j.review.decision == "approve")
        .map(|j| j.review.reviewer.clone())
        .collect()
}

/// A stored run's facts, as a credential issued for it must carry them: read from the store at
/// issuance, never from the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRun {
    /// The run's stack.
    pub stack: String,
    /// The stack's repository.
    pub repository: String,
    /// The commit resolved at submit.
    pub commit_sha: String,
    /// The branch it was the head of, if any.
    pub git_ref: Option<String>,
    /// Pull request, as given at submit.
    pub pull_request: Option<u64>,
    /// Ticket, as given at submit.
    pub ticket: Option<String>,
    /// Where the pull request and ticket were observed (`github`), if the broker observed them.
    pub pull_request_source: Option<String>,
    /// Who submitted it.
    pub triggered_by: String,
    /// Whose approvals count.
    pub approved_by: Vec<String>,
}

impl RecordedRun {
    /// The run `id` as recorded, or `None` when no such run exists.
    pub async fn load(store: &Store, id: &str) -> Result<Option<Self>, StoreError> {
        let Some((run, repository, reviews)) = store.run_with_reviews(id).await? else { return Ok(None) };
        Ok(Some(Self::from_rows(run, repository, &reviews)))
    }

    fn from_rows(run: RunRow, repository: String, reviews: &[ReviewRow]) -> Self {
        Self {
            approved_by: counted_approvers(&run.triggered_by, reviews),
            stack: run.stack,
            repository,
            commit_sha: run.commit_sha,
            git_ref: run.git_ref,
            pull_request: run.pull_request.and_then(|n| u64::try_from(n).ok()),
            ticket: run.ticket,
            pull_request_source: run.pull_request_source,
            triggered_by: run.triggered_by,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(who: &str, decision: &str) -> ReviewRow {
        ReviewRow { reviewer: who.into(), decision: decision.into(), comment: None, at: 1, identity: None }
    }

    #[test]
    fn the_authors_approval_is_recorded_but_never_counts() {
        let reviews = [review("alice", "approve"), review("bob", "approve"), review("carol", "approve")];
        assert_eq!(counted_approvers("alice", &reviews), ["bob", "carol"]);
        let judged = judge("alice", &reviews);
        assert_eq!(judged.len(), 3, "every review is kept");
        assert!(judged[0].author && !judged[0].counted);
        assert_eq!(judged[0].note, Some(AUTHOR_APPROVAL));
        assert!(judged[1].counted && !judged[1].author && judged[1].note.is_none());
    }

    #[test]
    fn rejections_count_whoever_makes_them() {
        let reviews = [review("alice", "reject"), review("bob", "reject")];
        assert!(judge("alice", &reviews).iter().all(|j| j.counted));
        assert!(counted_approvers("alice", &reviews).is_empty(), "a rejection is not an approval");
    }

    #[test]
    fn only_the_author_is_excluded() {
        let reviews = [review("alice-2", "approve"), review("Alice", "approve")];
        assert_eq!(counted_approvers("alice", &reviews), ["alice-2", "Alice"]);
    }
}
