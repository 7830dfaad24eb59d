// @ts-check
/**
 * Generate `types.d.ts` from the sidecar's JSON Schemas (`../../schemas/*.json`).
 *
 *   node scripts/gen-types.mjs            write types.d.ts
 *   node scripts/gen-types.mjs --check    exit 1 when types.d.ts differs from the schemas
 *
 * Every schema file becomes one exported type named after its title
 * (`model.generate.params` -> `ModelGenerateParams`); the `$defs` shared by the files
 * (identical across files, checked here) become one exported type each. `schemas/index.json`
 * becomes the `SidecarMethods` / `SidecarNotifications` maps used by the host's typed
 * `request()`.
 */
import { readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { compile } from 'json-schema-to-typescript';

const here = path.dirname(fileURLToPath(import.meta.url));
export const SCHEMAS_DIR = path.resolve(here, '../../../schemas');
export const OUTPUT = path.resolve(here, '../types.d.ts');

/** `model.generate.params` / `cancelRequest.notification` -> `ModelGenerateParams` / `CancelRequestNotification`. */
export function typeName(/** @type {string} */ title) {
  return title
    .split(/[^A-Za-z0-9]+/)
    .filter(Boolean)
    .map((part) => part[0].toUpperCase() + part.slice(1))
    .join('');
}

/**
 * Remove `title` everywhere below a type's root, so properties do not become named types.
 * @param {any} node
 * @returns {any}
 */
function stripTitles(node, isRoot = true) {
  if (Array.isArray(node)) return node.map((item) => stripTitles(item, false));
  if (node === null || typeof node !== 'object') return node;
  // json-schema-to-typescript turns a $ref with siblings ("default") into a new copy of the
  // type (Priority1, Priority2...): keep the reference alone.
  if (typeof node.$ref === 'string') return { $ref: node.$ref };
  /** @type {Record<string, any>} */
  const out = {};
  for (const [key, value] of Object.entries(node)) {
    if (key === 'title' && !isRoot) continue;
    if (key === 'default' || key === 'examples') {
      out[key] = value; // values, not schemas
      continue;
    }
    if (key === 'properties' || key === '$defs' || key === 'patternProperties') {
      out[key] = Object.fromEntries(Object.entries(value).map(([k, v]) => [k, stripTitles(v, false)]));
      continue;
    }
    out[key] = stripTitles(value, false);
  }
  return out;
}

/** Build the text of types.d.ts from the schema files. */
export async function generate(schemasDir = SCHEMAS_DIR) {
  const index = JSON.parse(await readFile(path.join(schemasDir, 'index.json'), 'utf8'));
  const files = (await readdir(schemasDir)).filter((f) => f.endsWith('.json') && f !== 'index.json').sort();
  /** @type {Record<string, any>} */
  const defs = {};
  /** @type {Record<string, string>} file -> type name */
  const fileTypes = {};
  for (const file of files) {
    const schema = JSON.parse(await readFile(path.join(schemasDir, file), 'utf8'));
    const { $defs = {}, $id, $schema, ...top } = schema;
    for (const [name, def] of Object.entries($defs)) {
      if (name in defs && JSON.stringify(defs[name]) !== JSON.stringify(def)) {
        throw new Error(`schemas disagree on $defs/${name} (${file})`);
      }
      defs[name] = def;
    }
    const name = typeName(top.title ?? file.replace(/\.json$/, ''));
    if (name in defs) throw new Error(`type name ${name} of ${file} clashes with a $def`);
    fileTypes[file] = name;
    defs[name] = { ...top, description: `${top.description ?? ''}\n\nSchema: schemas/${file}`.trim() };
  }
  for (const [name, def] of Object.entries(defs)) {
    // An empty schema is any JSON value (pydantic's JsonValue): `unknown`, not an object type.
    defs[name] = Object.keys(def).length === 0 ? { title: name, tsType: 'unknown' } : { ...stripTitles(def), title: name };
  }
  const sortedDefs = Object.fromEntries(Object.entries(defs).sort(([a], [b]) => a.localeCompare(b)));
  const root = {
    title: 'SidecarSchemas',
    type: 'object',
    additionalProperties: false,
    properties: Object.fromEntries(Object.values(fileTypes).sort().map((n) => [n, { $ref: `#/$defs/${n}` }])),
    $defs: sortedDefs,
  };
  let body = await compile(/** @type {any} */ (root), 'SidecarSchemas', {
    bannerComment: '',
    unreachableDefinitions: true,
    additionalProperties: true,
    strictIndexSignatures: false,
    format: true,
    style: { singleQuote: true, printWidth: 100 },
  });
  // The root type only exists to make every schema reachable; drop it.
  body = body.replace(/export interface SidecarSchemas \{[\s\S]*?\n\}\n/, '').trimStart();
  body = body
    .replace(/\n \*\n \* This interface was referenced by `SidecarSchemas`'s JSON-Schema\n \* via the `definition` "[^"]*"\./g, '')
    .replace(/\/\*\*\n \* This interface was referenced by `SidecarSchemas`'s JSON-Schema\n \* via the `definition` "[^"]*"\.\n \*\/\n/g, '');

  const t = (/** @type {string} */ file) => {
    const name = fileTypes[file];
    if (!name) throw new Error(`schemas/index.json names ${file}, which does not exist`);
    return name;
  };
  const methods = Object.entries(index.methods)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([m, e]) => `  '${m}': { params: ${t(e.params)}; result: ${t(e.result)} };`)
    .join('\n');
  const notifications = Object.entries(index.notifications)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([m, e]) => `  /** ${e.direction} */\n  '${m}': ${t(e.params)};`)
    .join('\n');
  return [
    '/* eslint-disable */',
    '// GENERATED by `npm run gen-types` (scripts/gen-types.mjs) from ../../schemas/*.json.',
    '// Do not edit: change the sidecar\'s pydantic models, regenerate schemas/, then run `npm run gen-types`.',
    '',
    `/** The protocol version these types (and the host) were written for: \`sidecar:ready\` must say this. */`,
    `export type ProtocolVersion = ${JSON.stringify(index.protocolVersion)};`,
    '',
    '/** Every request method: its params and its result (schemas/index.json). */',
    'export interface SidecarMethods {',
    methods,
    '}',
    '',
    '/** Every notification and its params (schemas/index.json). */',
    'export interface SidecarNotifications {',
    notifications,
    '}',
    '',
    ...(t(index.errorData) === 'ErrorData'
      ? []
      : ['/** The `data` member of every JSON-RPC error. */', `export type ErrorData = ${t(index.errorData)};`, '']),
    body.trimEnd(),
    '',
  ].join('\n');
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const text = await generate();
  if (process.argv.includes('--check')) {
    const current = await readFile(OUTPUT, 'utf8').catch(() => '');
    if (current !== text) {
      console.error('types.d.ts is out of date with schemas/: run `npm run gen-types`');
      process.exit(1);
    }
    console.log('types.d.ts matches schemas/');
  } else {
    await writeFile(OUTPUT, text);
    console.log(`wrote ${path.relative(process.cwd(), OUTPUT)}`);
  }
}
