//! etcd membership as every member mover changes it: the in-place roll,
//! healing's replacement and live scaling. Which mover may act at all is
//! decided by `kok_templates::membership`; this module performs the step a
//! mover asked for, and every step is idempotent: repeated after a restart
//! that lost its record, it finds its own earlier work (a member kok added
//! is found again by its peer URL: its name is empty until it starts).

use etcd_client::{Client, MemberAddOptions};

use super::{EtcdAccess, EtcdError, Member};

/// A tenant etcd's membership as the member kok reached reported it, with
/// the client that asked (later steps go through the same member).
pub struct Membership {
    client: Client,
    members: Vec<etcd_client::Member>,
}

/// What a promotion found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    Promoted,
    /// A voter already: promoted in a pass whose record was lost.
    AlreadyVoting,
}

/// What withdrawing a learner found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    Removed,
    /// No member with that peer URL.
    Absent,
    /// It was promoted meanwhile: a voter is never withdrawn.
    Voting,
}

/// What removing a voter did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// It led: leadership was handed to this member first, and the removal
    /// waits for the next pass (removing a leader costs an election with
    /// writes stalled; a hand-over does not).
    LeadershipMoved(u64),
}

impl Membership {
    /// Connects through the first member of `access` that answers and reads
    /// the member list.
    pub async fn read(access: &EtcdAccess) -> Result<Self, EtcdError> {
        let mut client = access.connect().await?;
        let members = client.member_list().await?.members().to_vec();
        Ok(Self { client, members })
    }

    pub fn members(&self) -> &[etcd_client::Member] {
        &self.members
    }

    /// The member whose peer URL is `url`.
    pub fn with_peer_url(&self, url: &str) -> Option<&etcd_client::Member> {
        with_peer_url(&self.members, url)
    }

    /// Members with a vote.
    pub fn voting(&self) -> usize {
        self.members.iter().filter(|m| !m.is_learner()).count()
    }

    /// The member id of the current leader, as the member reached sees it.
    pub async fn leader(&mut self) -> Result<u64, EtcdError> {
        Ok(self.client.status().await?.leader())
    }

    /// Adds `url` as a learner, unless a member with that peer URL is there
    /// already (added in a pass whose record was lost): its id either way.
    pub async fn add_learner(&mut self, url: &str) -> Result<u64, EtcdError> {
        if let Some(m) = self.with_peer_url(url) {
            return Ok(m.id());
        }
        let added = self
            .client
            .member_add([url], Some(MemberAddOptions::new().with_is_learner()))
            .await?;
        self.members = added.member_list().to_vec();
        Ok(added.member().map(|m| m.id()).unwrap_or_default())
    }

    /// Promotes the learner `id`. etcd refuses while it has not caught up
    /// ("can only promote a learner member which is in sync with leader"):
    /// that error is returned for the caller to wait on.
    pub async fn promote(&mut self, id: u64) -> Result<Promotion, EtcdError> {
        if self.members.iter().any(|m| m.id() == id && !m.is_learner()) {
            return Ok(Promotion::AlreadyVoting);
        }
        self.client.member_promote(id).await?;
        Ok(Promotion::Promoted)
    }

    /// Removes member `id` as it is (a learner, or a voter known not to lead).
    pub async fn remove(&mut self, id: u64) -> Result<(), EtcdError> {
        let left = self.client.member_remove(id).await?;
        self.members = left.members().to_vec();
        Ok(())
    }

    /// Removes the learner with peer URL `url`, a learner kok added that no
    /// longer has a place (the spec asked for fewer members meanwhile). It
    /// has no vote, so no quorum is at stake.
    pub async fn withdraw_learner(&mut self, url: &str) -> Result<Withdrawal, EtcdError> {
        match self.with_peer_url(url).map(|m| (m.id(), m.is_learner())) {
            None => Ok(Withdrawal::Absent),
            Some((_, false)) => Ok(Withdrawal::Voting),
            Some((id, true)) => {
                self.remove(id).await?;
                Ok(Withdrawal::Removed)
            }
        }
    }

    /// Removes the voter `id`; when it leads, hands leadership to
    /// `successor` first through `own`, the member itself (only the leader
    /// can hand over). Without a successor or its own address it is removed
    /// as it is.
    pub async fn remove_voter(
        &mut self,
        id: u64,
        access: &EtcdAccess,
        own: Option<&Member>,
        successor: Option<u64>,
    ) -> Result<Removal, EtcdError> {
        if self.leader().await? == id {
            if let (Some(to), Some(own)) = (successor, own) {
                move_leader(access, own, to).await?;
                return Ok(Removal::LeadershipMoved(to));
            }
        }
        self.remove(id).await?;
        Ok(Removal::Removed)
    }
}

/// The member whose peer URL is `url`.
pub fn with_peer_url<'a>(
    members: &'a [etcd_client::Member],
    url: &str,
) -> Option<&'a etcd_client::Member> {
    members
        .iter()
        .find(|m| m.peer_urls().iter().any(|u| u == url))
}

/// Hands leadership from `from` (reached alone: only the leader can hand
/// over) to the member `to`.
pub async fn move_leader(access: &EtcdAccess, from: &Member, to: u64) -> Result<(), EtcdError> {
    let mut client = access.connect_member(from).await?;
    client.move_leader(to).await?;
    Ok(())
}
