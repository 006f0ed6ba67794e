// fhir-kit-client (npm) driving the server over HTTP: transactions, batches, conditional create / update / delete,
// search with paging (nextPage), read, vread, patch and history. Run by tests/test_client_fhir_kit.py with the base
// URL of a running server in FHIR_BASE_URL:  FHIR_BASE_URL=http://127.0.0.1:8080/fhir node --test
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it } from 'node:test';

import { Client, RESPONSE_KEY } from 'fhir-kit-client';

const baseUrl = process.env.FHIR_BASE_URL;
if (!baseUrl) throw new Error('set FHIR_BASE_URL to the base URL of a running server');
const client = new Client({ baseUrl });
const MRN = 'urn:test:fhir-kit-client';

/** The HTTP status of a fhir-kit-client result (the fetch Response is attached to it). */
const statusOf = (result) => result[RESPONSE_KEY].status;
/** A header of the HTTP response behind a result. */
const headerOf = (result, name) => result[RESPONSE_KEY].headers.get(name);

/** The error a call rejects with, to look at its status and OperationOutcome. */
async function failure(promise) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  assert.fail('the call succeeded, but a failure was expected');
}

function patient(family, mrn = randomUUID()) {
  return {
    resourceType: 'Patient',
    identifier: [{ system: MRN, value: mrn }],
    name: [{ family, given: ['Kit'] }],
    gender: 'female',
    birthDate: '1970-05-06',
  };
}

function observation(subject, value, marker) {
  return {
    resourceType: 'Observation',
    status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code: '8867-4', display: 'Heart rate' }], text: marker },
    subject: { reference: subject },
    effectiveDateTime: '2024-01-02T03:04:05Z',
    valueQuantity: { value, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
  };
}

/** Every page of a search, following `next` links with client.nextPage. */
async function allPages(first) {
  const pages = [first];
  for (let page = await client.nextPage({ bundle: first }); page; page = await client.nextPage({ bundle: page })) {
    pages.push(page);
    assert.ok(pages.length < 100, 'next links do not end');
  }
  return pages;
}

const idsOf = (pages) => pages.flatMap((p) => (p.entry ?? []).map((e) => e.resource.id));

describe('fhir-kit-client against the server', () => {
  it('reads the CapabilityStatement', async () => {
    const cs = await client.capabilityStatement();
    assert.equal(cs.resourceType, 'CapabilityStatement');
    assert.equal(cs.fhirVersion, '4.0.1');
    const types = cs.rest[0].resource.map((r) => r.type);
    assert.ok(types.includes('Patient') && types.includes('Observation'));
  });

  it('creates, reads, updates, vreads, patches and reads history', async () => {
    const created = await client.create({ resourceType: 'Patient', body: patient('Kitread') });
    assert.equal(statusOf(created), 201);
    assert.equal(created.meta.versionId, '1');
    assert.match(headerOf(created, 'location'), new RegExp(`/Patient/${created.id}/_history/1$`));
    const { id } = created;

    const read = await client.read({ resourceType: 'Patient', id });
    assert.deepEqual(read.name, [{ family: 'Kitread', given: ['Kit'] }]);
    assert.equal(headerOf(read, 'etag'), 'W/"1"');

    const updated = await client.update({ resourceType: 'Patient', id, body: { ...read, gender: 'other' } });
    assert.equal(statusOf(updated), 200);
    assert.equal(updated.meta.versionId, '2');
    assert.equal(updated.gender, 'other');

    const first = await client.vread({ resourceType: 'Patient', id, version: '1' });
    assert.equal(first.gender, 'female');
    assert.equal(first.meta.versionId, '1');

    const patched = await client.patch({
      resourceType: 'Patient',
      id,
      jsonPatch: [{ op: 'replace', path: '/birthDate', value: '1971-06-07' }],
    });
    assert.equal(patched.birthDate, '1971-06-07');
    assert.equal(patched.meta.versionId, '3');

    const history = await client.history({ resourceType: 'Patient', id });
    assert.equal(history.type, 'history');
    assert.deepEqual(history.entry.map((e) => e.resource.meta.versionId), ['3', '2', '1']);

    const typeHistory = await client.history({ resourceType: 'Patient' });
    assert.equal(typeHistory.type, 'history');
    const systemHistory = await client.history({});
    assert.equal(systemHistory.type, 'history');

    const deleted = await client.delete({ resourceType: 'Patient', id });
    assert.ok([200, 204].includes(statusOf(deleted)));
    const gone = await failure(client.read({ resourceType: 'Patient', id }));
    assert.equal(gone.response.status, 410);
    const missing = await failure(client.read({ resourceType: 'Patient', id: `no-such-${randomUUID()}` }));
    assert.equal(missing.response.status, 404);
    assert.equal(missing.response.data.resourceType, 'OperationOutcome');
  });

  it('pages through instance history with next links', async () => {
    const created = await client.create({ resourceType: 'Patient', body: patient('Kithistory') });
    let current = created;
    for (let i = 0; i < 4; i += 1) {
      current = await client.update({ resourceType: 'Patient', id: created.id, body: { ...current, active: i % 2 === 0 } });
    }
    const first = await client.request(`Patient/${created.id}/_history?_count=2`);
    const pages = await allPages(first);
    assert.equal(pages.length, 3);
    assert.deepEqual(pages.flatMap((p) => p.entry.map((e) => e.resource.meta.versionId)), ['5', '4', '3', '2', '1']);
  });

  it('runs a transaction: local references are rewritten, conditional create reuses, everything is atomic', async () => {
    const marker = `tx-${randomUUID()}`;
    const existingMrn = randomUUID();
    const existing = await client.create({ resourceType: 'Patient', body: patient(`${marker}-old`, existingMrn) });
    const patientUrl = `urn:uuid:${randomUUID()}`;
    const bundle = {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        { fullUrl: patientUrl, resource: patient(marker), request: { method: 'POST', url: 'Patient' } },
        { resource: observation(patientUrl, 71, marker), request: { method: 'POST', url: 'Observation' } },
        {
          resource: patient(`${marker}-dup`, existingMrn),
          request: { method: 'POST', url: 'Patient', ifNoneExist: `identifier=${MRN}|${existingMrn}` },
        },
      ],
    };
    const result = await client.transaction({ body: bundle });
    assert.equal(result.type, 'transaction-response');
    assert.deepEqual(result.entry.map((e) => e.response.status.split(' ')[0]), ['201', '201', '200']);
    const newPatient = result.entry[0].response.location.match(/Patient\/([^/]+)/)[1];
    const obsId = result.entry[1].response.location.match(/Observation\/([^/]+)/)[1];
    assert.match(result.entry[2].response.location, new RegExp(`/Patient/${existing.id}/`));
    const obs = await client.read({ resourceType: 'Observation', id: obsId });
    assert.equal(obs.subject.reference, `Patient/${newPatient}`);

    const broken = {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        { resource: patient(`${marker}-atomic`), request: { method: 'POST', url: 'Patient' } },
        { resource: { resourceType: 'Observation', status: 'not-a-status' }, request: { method: 'POST', url: 'Observation' } },
      ],
    };
    const error = await failure(client.transaction({ body: broken }));
    assert.ok(error.response.status >= 400 && error.response.status < 500, `status ${error.response.status}`);
    assert.equal(error.response.data.resourceType, 'OperationOutcome');
    const after = await client.search({ resourceType: 'Patient', searchParams: { family: `${marker}-atomic` } });
    assert.equal(after.total, 0);
  });

  it('runs a batch: each entry succeeds or fails on its own', async () => {
    const marker = `batch-${randomUUID()}`;
    const bundle = {
      resourceType: 'Bundle',
      type: 'batch',
      entry: [
        { resource: patient(marker), request: { method: 'POST', url: 'Patient' } },
        { resource: { resourceType: 'Patient', gender: 'not-a-gender' }, request: { method: 'POST', url: 'Patient' } },
        { request: { method: 'GET', url: `Patient?family=${marker}` } },
        { request: { method: 'GET', url: `Patient/no-such-${randomUUID()}` } },
      ],
    };
    const result = await client.batch({ body: bundle });
    assert.equal(result.type, 'batch-response');
    const statuses = result.entry.map((e) => Number(e.response.status.split(' ')[0]));
    assert.equal(statuses[0], 201);
    assert.ok(statuses[1] >= 400 && statuses[1] < 500, `invalid entry answered ${statuses[1]}`);
    assert.equal(result.entry[1].response.outcome.resourceType, 'OperationOutcome');
    assert.equal(statuses[2], 200);
    assert.equal(statuses[3], 404);
    const created = await client.search({ resourceType: 'Patient', searchParams: { family: marker } });
    assert.equal(created.total, 1);
  });

  it('creates conditionally with If-None-Exist', async () => {
    const mrn = randomUUID();
    const ifNoneExist = { headers: { 'If-None-Exist': `identifier=${MRN}|${mrn}` } };
    const first = await client.create({ resourceType: 'Patient', body: patient('Kitcond', mrn), options: ifNoneExist });
    assert.equal(statusOf(first), 201);
    const again = await client.create({ resourceType: 'Patient', body: patient('Kitcond', mrn), options: ifNoneExist });
    assert.equal(statusOf(again), 200);
    assert.match(headerOf(again, 'location'), new RegExp(`/Patient/${first.id}/`));
    const found = await client.search({ resourceType: 'Patient', searchParams: { identifier: `${MRN}|${mrn}` } });
    assert.equal(found.total, 1);

    await client.create({ resourceType: 'Patient', body: patient('Kitcond', mrn) }); // now two match
    const ambiguous = await failure(
      client.create({ resourceType: 'Patient', body: patient('Kitcond', mrn), options: ifNoneExist }),
    );
    assert.equal(ambiguous.response.status, 412);
  });

  it('updates conditionally: creates on no match, updates on one, refuses several', async () => {
    const mrn = randomUUID();
    const searchParams = { identifier: `${MRN}|${mrn}` };
    const created = await client.update({ resourceType: 'Patient', searchParams, body: patient('Kitcu', mrn) });
    assert.equal(statusOf(created), 201);
    const updated = await client.update({
      resourceType: 'Patient',
      searchParams,
      body: { ...patient('Kitcu2', mrn), id: created.id },
    });
    assert.equal(statusOf(updated), 200);
    assert.equal(updated.id, created.id);
    assert.equal(updated.meta.versionId, '2');
    assert.equal(updated.name[0].family, 'Kitcu2');

    await client.create({ resourceType: 'Patient', body: patient('Kitcu3', mrn) });
    const ambiguous = await failure(
      client.update({ resourceType: 'Patient', searchParams, body: patient('Kitcu4', mrn) }),
    );
    assert.equal(ambiguous.response.status, 412);
  });

  it('deletes conditionally', async () => {
    const mrn = randomUUID();
    const created = await client.create({ resourceType: 'Patient', body: patient('Kitcd', mrn) });
    const deleted = await client.request(`Patient?identifier=${encodeURIComponent(`${MRN}|${mrn}`)}`, { method: 'DELETE' });
    assert.ok([200, 204].includes(statusOf(deleted)));
    const gone = await failure(client.read({ resourceType: 'Patient', id: created.id }));
    assert.equal(gone.response.status, 410);

    const twin = randomUUID();
    await client.create({ resourceType: 'Patient', body: patient('Kitcd', twin) });
    await client.create({ resourceType: 'Patient', body: patient('Kitcd', twin) });
    const ambiguous = await failure(
      client.request(`Patient?identifier=${encodeURIComponent(`${MRN}|${twin}`)}`, { method: 'DELETE' }),
    );
    assert.equal(ambiguous.response.status, 412);
  });

  it('searches with paging: GET, POST _search and compartment search all page through every match once', async () => {
    const marker = `page-${randomUUID()}`;
    const subject = await client.create({ resourceType: 'Patient', body: patient(marker) });
    const entries = Array.from({ length: 12 }, (_, i) => ({
      resource: observation(`Patient/${subject.id}`, 60 + i, marker),
      request: { method: 'POST', url: 'Observation' },
    }));
    const loaded = await client.transaction({ body: { resourceType: 'Bundle', type: 'transaction', entry: entries } });
    const expected = loaded.entry.map((e) => e.response.location.match(/Observation\/([^/]+)/)[1]).sort();

    const searchParams = { subject: `Patient/${subject.id}`, _count: 5 };
    const first = await client.search({ resourceType: 'Observation', searchParams });
    assert.equal(first.total, 12);
    const pages = await allPages(first);
    assert.deepEqual(pages.map((p) => (p.entry ?? []).length), [5, 5, 2]);
    assert.deepEqual(idsOf(pages).sort(), expected);

    const posted = await client.search({ resourceType: 'Observation', searchParams, options: { postSearch: true } });
    assert.deepEqual(idsOf(await allPages(posted)).sort(), expected);

    const compartment = await client.search({
      resourceType: 'Observation',
      compartment: { resourceType: 'Patient', id: subject.id },
      searchParams: { _count: 4 },
    });
    const compartmentPages = await allPages(compartment);
    assert.equal(compartmentPages.length, 3);
    assert.deepEqual(idsOf(compartmentPages).sort(), expected);

    const sorted = await client.search({
      resourceType: 'Observation',
      searchParams: { subject: `Patient/${subject.id}`, _sort: '-value-quantity', _count: 12 },
    });
    assert.deepEqual(sorted.entry.map((e) => e.resource.valueQuantity.value), Array.from({ length: 12 }, (_, i) => 71 - i));

    const included = await client.search({
      resourceType: 'Observation',
      searchParams: { subject: `Patient/${subject.id}`, _include: 'Observation:subject', _count: 3 },
    });
    const modes = included.entry.map((e) => `${e.search.mode}:${e.resource.resourceType}`);
    assert.deepEqual(modes, ['match:Observation', 'match:Observation', 'match:Observation', 'include:Patient']);

    const system = await client.search({ searchParams: { _type: 'Observation', _id: expected[0] } });
    assert.equal(system.total, 1);
  });

  it('calls $validate as an operation', async () => {
    const input = { resourceType: 'Parameters', parameter: [{ name: 'resource', resource: patient('Kitvalid') }] };
    const ok = await client.operation({ name: '$validate', resourceType: 'Patient', input });
    assert.equal(ok.resourceType, 'OperationOutcome');
    assert.ok(ok.issue.every((i) => !['error', 'fatal'].includes(i.severity)), JSON.stringify(ok.issue));
    const bad = { resourceType: 'Parameters', parameter: [{ name: 'resource', resource: { resourceType: 'Patient', gender: 'x' } }] };
    const outcome = await client.operation({ name: 'validate', resourceType: 'Patient', input: bad });
    assert.ok(outcome.issue.some((i) => i.severity === 'error'), JSON.stringify(outcome.issue));
  });
});
