// MongoDB's users under compose: one per service, each on its own database only; the audit's,
// which may only insert and read; and the operator's, for `warren --compose`.
//
// The mongo image runs this file with mongosh at the first start of an empty volume
// (/docker-entrypoint-initdb.d/), right after it created root from MONGO_INITDB_ROOT_USERNAME
// and MONGO_INITDB_ROOT_PASSWORD_FILE, and never again on that volume. It is safe to run again
// by hand, as root, after a password changed (it updates the users it finds): see
// docs/14-security.md, "MongoDB: one user per service".
//
// Every user lives in `admin`, so every MONGO_URL says authSource=admin. The passwords are the
// secret files compose mounts in /run/secrets (written from .env by `make secrets`), never
// literals here. tests/unit/test_mongo_users.py runs this file under Node against a recording
// `db` and checks the users against the services and the compose file.

const fs = require("fs");

// <prefix>_<service>, as the services name their databases (shared/settings.py, mongo_db_of).
const PREFIX = process.env.MONGO_DB_PREFIX || "warren";
const database = (service) => `${PREFIX}_${service}`;

function passwordOf(user) {
  const password = fs.readFileSync(`/run/secrets/mongo_password_${user}`, "utf8").trim();
  if (!password) {
    throw new Error(`/run/secrets/mongo_password_${user} is empty`);
  }
  return password;
}

// --8<-- [start:users]
// The audit trail is evidence: the database keeps it append-only, whatever the code does.
// `insert` and `find` are all the audit does with its documents (services/audit/repository.py;
// a redelivered event's insert fails on its _id and the record that stands is read back), and
// it creates its indexes at start-up (`createIndexes` needs `createIndex`; an insert or an
// index creates its collection with no other privilege). No update, no remove, no drop.
const AUDIT_APPEND_ONLY = {
  role: "warrenAuditAppendOnly",
  privileges: [
    {
      resource: { db: database("audit"), collection: "" },
      actions: ["insert", "find", "createIndex"],
    },
  ],
  roles: [],
};

// user -> its roles. A service's user has its own database and nothing else.
const USERS = {
  order: [{ role: "readWrite", db: database("order") }],
  inventory: [{ role: "readWrite", db: database("inventory") }], // and the seed job
  payment: [{ role: "readWrite", db: database("payment") }],
  notification: [{ role: "readWrite", db: database("notification") }], // and its Celery worker
  audit: [{ role: AUDIT_APPEND_ONLY.role, db: "admin" }],
  // The operator's commands from this machine (`warren --compose`): `seed` writes inventory's
  // catalogue, `outbox retry` and `orders rebuild` write the order service's database; `ledger`
  // and `audit` only read. Not root: it cannot touch the users, nor write the audit trail.
  operator: [
    { role: "readWrite", db: database("order") },
    { role: "readWrite", db: database("inventory") },
    { role: "read", db: database("payment") },
    { role: "read", db: database("notification") },
    { role: "read", db: database("audit") },
  ],
};
// --8<-- [end:users]

const admin = db.getSiblingDB("admin");

if (admin.getRole(AUDIT_APPEND_ONLY.role)) {
  admin.updateRole(AUDIT_APPEND_ONLY.role, {
    privileges: AUDIT_APPEND_ONLY.privileges,
    roles: AUDIT_APPEND_ONLY.roles,
  });
} else {
  admin.createRole(AUDIT_APPEND_ONLY);
}

for (const [user, roles] of Object.entries(USERS)) {
  const pwd = passwordOf(user);
  if (admin.getUser(user)) {
    admin.updateUser(user, { pwd, roles });
  } else {
    admin.createUser({ user, pwd, roles });
  }
  print(`warren: MongoDB user ${user}: ${roles.map((r) => `${r.role}@${r.db}`).join(", ")}`);
}
