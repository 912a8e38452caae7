//! Access rules: a role is a set of rules, a rule allows one operation on one kind of resource
//! within a scope (the caller's own, their organisation's, their collaborations', or any), and a
//! principal (a user or a service identity) may do what one of its roles' rules allows. The roles
//! are defined here, in code, and assigned per principal in the database.

/// What is done to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Create,
    View,
    Edit,
    Delete,
    /// Use without changing: run a task on it, receive its key.
    Use,
}

/// How far a rule reaches, narrowest first; each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Resources the principal owns.
    Own,
    /// Resources of the principal's organisation.
    Organisation,
    /// Resources of a collaboration the principal's organisation takes part in.
    Collaboration,
    /// Any resource.
    Global,
}

/// One permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The kind of resource (`model`, `request-key`, `audit`, `invite`, `organisation`, `user`,
    /// `service`, `task`, …), or `*` for every kind.
    pub resource: &'static str,
    pub scope: Scope,
    pub operation: Operation,
}

/// A named set of rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleDef {
    pub name: &'static str,
    pub rules: &'static [Rule],
}

const fn rule(resource: &'static str, scope: Scope, operation: Operation) -> Rule {
    Rule { resource, scope, operation }
}

use Operation::*;
use Scope::*;

/// Every role. `user` is every registered user's; `administrator` is the operator's delegate;
/// `organisation-admin` manages one organisation; `node` and `run` are service identities'.
pub const ROLES: &[RoleDef] = &[
    RoleDef {
        name: "user",
        rules: &[
            rule("model", Own, Create),
            rule("model", Own, View),
            rule("model", Own, Edit),
            rule("model", Own, Delete),
            rule("request-key", Own, Create),
            rule("request-key", Own, View),
            rule("audit", Own, View),
            rule("user", Own, View),
        ],
    },
    RoleDef {
        name: "organisation-admin",
        rules: &[
            rule("user", Organisation, View),
            rule("user", Organisation, Edit),
            rule("service", Organisation, Create),
            rule("service", Organisation, View),
            rule("service", Organisation, Delete),
            rule("model", Organisation, View),
            rule("audit", Organisation, View),
            rule("node", Organisation, Create),
            rule("node", Organisation, View),
            rule("node", Organisation, Delete),
            rule("collaboration", Collaboration, View),
            rule("organisation", Collaboration, View),
        ],
    },
    RoleDef {
        name: "administrator",
        rules: &[
            rule("*", Global, Create),
            rule("*", Global, View),
            rule("*", Global, Edit),
            rule("*", Global, Delete),
        ],
    },
    // Federation's roles, after vantage6's defaults (server/default_roles.py): a viewer sees its
    // collaborations; a researcher also creates tasks in them and kills its organisation's; a
    // collaboration administrator also kills any task in them. Only an organisation's own
    // administrators make its nodes (a node receives its runs and sets its key).
    RoleDef {
        name: "viewer",
        rules: &[
            rule("organisation", Collaboration, View),
            rule("collaboration", Collaboration, View),
            rule("node", Collaboration, View),
            rule("task", Collaboration, View),
            rule("run", Collaboration, View),
        ],
    },
    RoleDef {
        name: "researcher",
        rules: &[
            rule("organisation", Collaboration, View),
            rule("collaboration", Collaboration, View),
            rule("node", Collaboration, View),
            rule("task", Collaboration, View),
            rule("run", Collaboration, View),
            rule("task", Collaboration, Create),
            rule("task", Organisation, Delete),
        ],
    },
    RoleDef {
        name: "collaboration-admin",
        rules: &[
            rule("organisation", Collaboration, View),
            rule("collaboration", Collaboration, View),
            rule("collaboration", Collaboration, Edit),
            rule("node", Collaboration, View),
            rule("task", Collaboration, View),
            rule("run", Collaboration, View),
            rule("task", Collaboration, Create),
            rule("task", Collaboration, Delete),
        ],
    },
    RoleDef {
        name: "node",
        rules: &[
            rule("model", Collaboration, Use),
            rule("task", Collaboration, View),
            rule("organisation", Collaboration, View),
            rule("run", Organisation, Edit),
            rule("organisation", Organisation, Edit),
        ],
    },
    RoleDef { name: "run", rules: &[rule("task", Own, View), rule("task", Own, Edit)] },
];

/// The role named `name`.
pub fn role(name: &str) -> Option<&'static RoleDef> {
    ROLES.iter().find(|r| r.name == name)
}

/// Who holds a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    User,
    /// A node of an organisation (federation, the farm).
    Node,
    /// One run of a task, for its lifetime only.
    Run,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Node => "node",
            PrincipalKind::Run => "run",
        }
    }

    pub fn parse(s: &str) -> Option<PrincipalKind> {
        [PrincipalKind::User, PrincipalKind::Node, PrincipalKind::Run].into_iter().find(|k| k.as_str() == s)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub id: String,
    pub kind: PrincipalKind,
    pub organisation: Option<String>,
    /// Role names, each in [`ROLES`].
    pub roles: Vec<String>,
    /// Collaborations the principal's organisation takes part in.
    pub collaborations: Vec<String>,
}

/// What a resource belongs to, for a rule's scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Target<'a> {
    pub owner: Option<&'a str>,
    pub organisation: Option<&'a str>,
    pub collaboration: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// A resource with no owner (the server's own: invites, organisations).
    pub fn global() -> Target<'a> {
        Target::default()
    }

    /// A resource `owner` owns.
    pub fn owned_by(owner: &'a str) -> Target<'a> {
        Target { owner: Some(owner), ..Target::default() }
    }
}

impl Principal {
    /// Whether one of the principal's roles has a rule allowing `operation` on `resource` that
    /// reaches `target`.
    pub fn may(&self, operation: Operation, resource: &str, target: &Target<'_>) -> bool {
        let reach = self.reach(target);
        self.roles.iter().filter_map(|r| role(r)).flat_map(|r| r.rules.iter()).any(|rule| {
            rule.operation == operation && (rule.resource == "*" || rule.resource == resource) && rule.scope >= reach
        })
    }

    /// The narrowest scope that reaches `target` from this principal.
    fn reach(&self, target: &Target<'_>) -> Scope {
        if target.owner.is_some_and(|o| o == self.id) {
            Own
        } else if target.organisation.is_some() && target.organisation == self.organisation.as_deref() {
            Organisation
        } else if target.collaboration.is_some_and(|c| self.collaborations.iter().any(|m| m == c)) {
            Collaboration
        } else {
            Global
        }
    }

    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "administrator")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(id: &str, org: Option<&str>, roles: &[&str]) -> Principal {
        Principal {
            id: id.into(),
            kind: PrincipalKind::User,
            organisation: org.map(Into::into),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            collaborations: vec!["c1".into()],
        }
    }

    #[test]
    fn scopes_reach_as_far_as_they_say() {
        let alice = who("alice", Some("acme"), &["user"]);
        assert!(alice.may(Edit, "model", &Target::owned_by("alice")));
        assert!(!alice.may(Edit, "model", &Target::owned_by("bob")), "another user's model");
        assert!(!alice.may(Create, "invite", &Target::global()), "users make no invites");
        let org_admin = who("carol", Some("acme"), &["user", "organisation-admin"]);
        let bob_at_acme = Target { owner: Some("bob"), organisation: Some("acme"), collaboration: None };
        assert!(org_admin.may(View, "user", &bob_at_acme));
        assert!(!org_admin.may(View, "user", &Target { organisation: Some("other"), ..bob_at_acme }));
        let admin = who("root", None, &["user", "administrator"]);
        assert!(admin.may(Create, "invite", &Target::global()) && admin.may(Delete, "model", &bob_at_acme));
        assert!(!admin.may(Use, "model", &bob_at_acme), "no rule allows Use to administrators");
        let node = Principal { kind: PrincipalKind::Node, ..who("n1", Some("acme"), &["node"]) };
        assert!(node.may(Use, "model", &Target { collaboration: Some("c1"), ..Target::default() }));
        assert!(!node.may(Use, "model", &Target { collaboration: Some("c2"), ..Target::default() }));
        assert!(!who("x", None, &["no-such-role"]).may(View, "model", &Target::owned_by("x")));
        for r in ROLES {
            assert_eq!(role(r.name), Some(r), "role names are unique");
        }
    }

    /// Federation's matrix: every default role × resource × operation × where the resource is
    /// (the caller's organisation, another organisation of the caller's collaboration, an
    /// organisation of another collaboration), against the table below and nothing more.
    #[test]
    fn the_federation_matrix_is_exactly_the_intended_one() {
        // (role, resource, operation, farthest reach): allowed at that reach and nearer.
        let allowed: &[(&str, &str, Operation, Scope)] = &[
            ("viewer", "organisation", View, Collaboration),
            ("viewer", "collaboration", View, Collaboration),
            ("viewer", "node", View, Collaboration),
            ("viewer", "task", View, Collaboration),
            ("viewer", "run", View, Collaboration),
            ("researcher", "organisation", View, Collaboration),
            ("researcher", "collaboration", View, Collaboration),
            ("researcher", "node", View, Collaboration),
            ("researcher", "task", View, Collaboration),
            ("researcher", "run", View, Collaboration),
            ("researcher", "task", Create, Collaboration),
            ("researcher", "task", Delete, Organisation),
            ("organisation-admin", "node", Create, Organisation),
            ("organisation-admin", "node", View, Organisation),
            ("organisation-admin", "node", Delete, Organisation),
            ("organisation-admin", "collaboration", View, Collaboration),
            ("organisation-admin", "organisation", View, Collaboration),
            ("collaboration-admin", "organisation", View, Collaboration),
            ("collaboration-admin", "collaboration", View, Collaboration),
            ("collaboration-admin", "collaboration", Edit, Collaboration),
            ("collaboration-admin", "node", View, Collaboration),
            ("collaboration-admin", "task", View, Collaboration),
            ("collaboration-admin", "run", View, Collaboration),
            ("collaboration-admin", "task", Create, Collaboration),
            ("collaboration-admin", "task", Delete, Collaboration),
            ("node", "task", View, Collaboration),
            ("node", "organisation", View, Collaboration),
            ("node", "run", Edit, Organisation),
            ("node", "organisation", Edit, Organisation),
        ];
        let resources = ["organisation", "collaboration", "node", "task", "run"];
        let operations = [View, Create, Edit, Delete, Use];
        // Where a resource is, seen from a caller in organisation "acme", collaboration "c1".
        let places: [(Scope, Target<'_>); 3] = [
            (Organisation, Target { owner: None, organisation: Some("acme"), collaboration: Some("c1") }),
            (Collaboration, Target { owner: None, organisation: Some("globex"), collaboration: Some("c1") }),
            (Global, Target { owner: None, organisation: Some("initech"), collaboration: Some("c2") }),
        ];
        let roles = ["user", "viewer", "researcher", "organisation-admin", "collaboration-admin", "node", "run"];
        for role in roles {
            let p = who("p", Some("acme"), &[role]);
            for resource in resources {
                for op in operations {
                    for (reach, target) in &places {
                        let expected = allowed
                            .iter()
                            .any(|(r, res, o, far)| *r == role && *res == resource && *o == op && reach <= far);
                        assert_eq!(
                            p.may(op, resource, target),
                            expected,
                            "{role} {op:?} {resource} at {reach:?} scope"
                        );
                    }
                }
            }
        }
        // An administrator may do everything but use (run a model, receive its key) anywhere.
        let admin = who("root", None, &["administrator"]);
        for resource in resources {
            for (_, target) in &places {
                assert!([View, Create, Edit, Delete].into_iter().all(|op| admin.may(op, resource, target)));
                assert!(!admin.may(Use, resource, target));
            }
        }
    }
}
