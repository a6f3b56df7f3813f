// MongoDB under compose is a replica set, rs0. This script, run by mongosh in the one-shot jobs
// mongo-replica-set (every `up`: MONGO_MEMBERS=mongo:27017) and mongo-members (the profile
// cluster: mongo, mongo-2, mongo-3), makes it one and waits for its primary:
//
//   1. not a replica set yet (a new volume, or one from before Warren had a replica set):
//      rs.initiate with the first member;
//   2. each member of MONGO_MEMBERS not in the set yet: rs.add, one at a time (MongoDB adds a
//      voting member at a time; a new member votes once it has copied the data), again while
//      the primary is busy with another reconfiguration;
//   3. wait until the set has a primary: only then can the services write.
//
// Run again, it finds everything in place and only waits. It connects to mongo directly (the
// job's URL says directConnection=true) and logs in as root, its password the secret file.
// tests/unit/test_mongo_replica_set.py runs it under Node against a recording `rs`.

const fs = require("fs");

const SET = "rs0";
const MEMBERS = (process.env.MONGO_MEMBERS || "mongo:27017")
  .split(",")
  .map((host) => host.trim())
  .filter((host) => host);
const WAIT_SECONDS = 60;

function rootPassword() {
  const password = fs.readFileSync("/run/secrets/mongo_root_password", "utf8").trim();
  if (!password) {
    throw new Error("/run/secrets/mongo_root_password is empty");
  }
  return password;
}

// rs.status() throws NotYetInitialized (code 94) until rs.initiate.
function initiated() {
  try {
    rs.status();
    return true;
  } catch (error) {
    if (error.code === 94 || error.codeName === "NotYetInitialized") {
      return false;
    }
    throw error;
  }
}

function waitFor(what, done) {
  for (let waited = 0; waited < WAIT_SECONDS * 2; waited += 1) {
    if (done()) {
      return;
    }
    sleep(500);
  }
  throw new Error(`warren: replica set ${SET}: no ${what} after ${WAIT_SECONDS} s`);
}

const hasPrimary = () => rs.status().members.some((member) => member.stateStr === "PRIMARY");

// rs.add is one reconfiguration, which the primary refuses while another is under way (its own,
// say, when a member added a moment ago has copied the data and gets its vote): try again.
const RECONFIGURING = [
  "ConfigurationInProgress",
  "CurrentConfigNotCommittedYet",
  "NewReplicaSetConfigurationIncompatible",
];

function add(host) {
  waitFor(`room to add ${host}`, () => {
    try {
      rs.add({ host });
      return true;
    } catch (error) {
      if (RECONFIGURING.includes(error.codeName)) {
        return false;
      }
      throw error;
    }
  });
  print(`warren: replica set ${SET}: ${host} added`);
}

db.getSiblingDB("admin").auth("root", rootPassword());

if (!initiated()) {
  rs.initiate({ _id: SET, members: [{ _id: 0, host: MEMBERS[0] }] });
  print(`warren: replica set ${SET} initiated with ${MEMBERS[0]}`);
}
waitFor("primary", hasPrimary);

for (const host of MEMBERS) {
  if (!rs.conf().members.some((member) => member.host === host)) {
    add(host);
  }
}
waitFor("primary", hasPrimary);

const states = rs.status().members.map((member) => `${member.name} ${member.stateStr}`);
print(`warren: replica set ${SET}: ${states.join(", ")}`);
