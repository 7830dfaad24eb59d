// @ts-check
/**
 * Emit the module's declaration files (dts/) from its JSDoc with tsc, plus a copy of the
 * schema types they import (dts/types.d.ts), so TypeScript apps get types without allowJs.
 *
 *   node scripts/gen-dts.mjs [OUT_DIR]     default: dts/
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.resolve(process.argv[2] ?? path.join(root, 'dts'));
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const tsc = path.join(root, 'node_modules/typescript/bin/tsc');
execFileSync(process.execPath, [tsc, '-p', path.join(root, 'tsconfig.dts.json'), '--outDir', out], { cwd: root, stdio: 'inherit' });
copyFileSync(path.join(root, 'types.d.ts'), path.join(out, 'types.d.ts'));
console.log(`wrote ${path.relative(process.cwd(), out) || '.'}`);
