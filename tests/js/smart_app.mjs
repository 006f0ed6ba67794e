// A SMART app built on the npm `fhirclient` Node adapter, run headless by tests/test_smart_js.py.
//
// It is the app side only: `GET /launch` calls fhirclient's authorize() (discovery through
// .well-known/smart-configuration, PKCE S256 with pkceMode "required"), `GET /callback` calls ready() (code exchange
// with the code_verifier), then uses the client: patient and fhirUser reads, a search, a refresh through the refresh
// token, and reads with the refreshed access token. The callback answers with a JSON report of what happened; the
// Python test plays the user's browser (sign-in, picker, consent forms) with plain HTTP.
//
//   APP_PORT=<port> OTHER_PATIENT=<id> node smart_app.mjs <client_id> <scope> [pkceMode] [clientSecret]
// prints `listening <port>` once it serves on 127.0.0.1 (the redirect URI is http://127.0.0.1:<port>/callback).

import http from "node:http";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const smart = require("fhirclient");

const [clientId, scope, pkceMode = "required", clientSecret = ""] = process.argv.slice(2);
const session = {}; // one user of this app at a time: fhirclient's server storage lives in req.session

function send(res, status, body) {
  res.writeHead(status, { "Content-Type": "application/json" });
  res.end(JSON.stringify(body));
}

async function use(client) {
  // what an app does after ready(): its context, its reads, a refresh, and the same reads again
  const report = {
    patient: client.patient.id,
    encounter: client.encounter.id,
    fhirUser: client.user.fhirUser,
    scope: client.state.tokenResponse.scope,
    hasRefreshToken: Boolean(client.getState("tokenResponse.refresh_token")),
    codeVerifierSent: Boolean(client.state.codeVerifier),
  };
  const patient = await client.patient.read();
  report.patientRead = `${patient.resourceType}/${patient.id}`;
  if (client.user.fhirUser) {
    try {
      const me = await client.user.read();
      report.userRead = `${me.resourceType}/${me.id}`;
    } catch (error) {
      report.userRead = error.status || String(error);
    }
  }
  const observations = await client.request(`Observation?patient=${client.patient.id}`, { flat: true });
  report.observations = observations.map((o) => o.subject.reference);
  try {
    await client.request(`Patient/${process.env.OTHER_PATIENT}`);
    report.otherPatient = "read";
  } catch (error) {
    report.otherPatient = error.status || String(error);
  }
  if (report.hasRefreshToken) {
    const before = client.state.tokenResponse.access_token;
    await client.refresh();
    report.refreshed = client.state.tokenResponse.access_token !== before;
    report.refreshedScope = client.state.tokenResponse.scope;
    const again = await client.patient.read();
    report.readAfterRefresh = `${again.resourceType}/${again.id}`;
    const old = await fetch(`${client.state.serverUrl}/Patient/${client.patient.id}`,
      { headers: { Authorization: `Bearer ${before}`, Accept: "application/fhir+json" } });
    report.oldTokenAfterRefresh = old.status;
  }
  return report;
}

const server = http.createServer(async (req, res) => {
  req.session = session;
  const url = new URL(req.url, "http://127.0.0.1");
  try {
    if (url.pathname === "/launch") {
      // standalone: iss from the query (fhirclient reads it); EHR: iss and launch from the EHR's launch URL
      await smart(req, res).authorize({
        clientId, scope, redirectUri: "/callback", pkceMode, ...(clientSecret ? { clientSecret } : {}),
      });
      return;
    }
    if (url.pathname === "/callback") {
      const client = await smart(req, res).ready();
      send(res, 200, await use(client));
      return;
    }
    send(res, 404, { error: "not found" });
  } catch (error) {
    send(res, 500, { error: String(error && error.message || error), status: error.status });
  }
});

server.listen(Number(process.env.APP_PORT || 0), "127.0.0.1", () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
