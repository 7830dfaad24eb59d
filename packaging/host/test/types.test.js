// @ts-check
// The typing is real: types.d.ts matches schemas/ (no drift), and tsc checks the module's
// JSDoc against it (checkJs, strict).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { promisify } from 'node:util';
import { generate, OUTPUT } from '../scripts/gen-types.mjs';
import { HOST_DIR } from './helpers.js';

const run = promisify(execFile);

test('types.d.ts is what `npm run gen-types` generates from schemas/ (no drift)', async () => {
  const committed = await readFile(OUTPUT, 'utf8');
  const fresh = await generate();
  assert.ok(committed === fresh, 'types.d.ts is out of date with ../../schemas: run `npm run gen-types` in packaging/host');
});

test('every method and notification of schemas/index.json is typed', async () => {
  const index = JSON.parse(await readFile(path.join(HOST_DIR, '../../schemas/index.json'), 'utf8'));
  const text = await readFile(OUTPUT, 'utf8');
  for (const method of [...Object.keys(index.methods), ...Object.keys(index.notifications)]) {
    assert.ok(text.includes(`'${method}':`), `${method} missing from types.d.ts`);
  }
  assert.ok(text.includes(`export type ProtocolVersion = ${index.protocolVersion};`));
});

const tsc = path.join(HOST_DIR, 'node_modules/typescript/bin/tsc');

/** @param {string[]} args */
function runNode(args) {
  return run(process.execPath, args, { cwd: HOST_DIR, maxBuffer: 16 * 1024 * 1024 }).then(
    (r) => ({ ok: true, out: r.stdout + r.stderr }),
    (e) => ({ ok: false, out: `${e.stdout}${e.stderr}` }),
  );
}

// The three tsc runs are independent: run them side by side.
describe('tsc', { concurrency: true, timeout: 180_000 }, () => {
  test('tsc --noEmit (checkJs, strict) passes over the module, the tests and a typed-usage fixture', async () => {
    const result = await runNode([tsc, '--noEmit', '-p', path.join(HOST_DIR, 'tsconfig.json')]);
    assert.ok(result.ok, `tsc found type errors:\n${result.out}`);
  });

  test('the types catch mistakes, and a TypeScript app compiles against dts/', async () => {
    const result = await runNode([tsc, '--noEmit', '-p', path.join(HOST_DIR, 'test/fixtures/tsconfig.bad.json')]);
    assert.equal(result.ok, false, 'tsc accepted a call with wrong types');
    const errors = result.out.split('\n').filter((l) => /error TS\d+/.test(l));
    assert.equal(errors.length, 1, result.out);
    assert.match(errors[0], /typed-bad\.js\(\d+,\d+\): error TS2322/);
  });

  test('dts/ is what `npm run gen-dts` emits from the JSDoc (no drift)', async () => {
    const out = await mkdtemp(path.join(os.tmpdir(), 'sidecar-host-dts-'));
    try {
      const result = await runNode([path.join(HOST_DIR, 'scripts/gen-dts.mjs'), out]);
      assert.ok(result.ok, result.out);
      const committed = path.join(HOST_DIR, 'dts');
      const files = (await readdir(out, { recursive: true })).filter((f) => f.endsWith('.d.ts')).sort();
      const have = (await readdir(committed, { recursive: true })).filter((f) => f.endsWith('.d.ts')).sort();
      assert.deepEqual(have, files, 'dts/ has other files than gen-dts emits: run `npm run gen-dts`');
      for (const file of files) {
        const [a, b] = await Promise.all([readFile(path.join(out, file), 'utf8'), readFile(path.join(committed, file), 'utf8')]);
        assert.ok(a === b, `dts/${file} is out of date: run \`npm run gen-dts\` in packaging/host`);
      }
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
});
