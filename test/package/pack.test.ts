/**
 * The package a user installs: `npm pack` (which builds dist/ through the prepare script) on a
 * copy of this tree, then `npm install` of the tarball into a fresh project outside the
 * repository, as a user would. Dependencies come from the registry (or npm's cache, when it has
 * them); nothing resolves through this repository's node_modules, so a dependency the build
 * needs but package.json does not declare fails here.
 *
 * Then: the tarball's contents and size; a strict NodeNext TypeScript consumer type-checks
 * against the installed types; `npx memfabric --help` / `--version` run the installed build
 * (tsx, a devDependency, is not there to fall back on); a README example, taken from the
 * installed README, compiles and runs against the installed package.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { builtinModules } from 'node:module';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { brokenPromise, codeBlocks } from '../docs/blocks.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
  name: string;
  version: string;
  files: string[];
  dependencies: Record<string, string>;
  engines: { node: string };
};
const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');

/** Bounds on the tarball: today about 0.6 MB packed, 2 MB unpacked, 300 files. */
const PACKED_BYTES_MAX = 1024 * 1024;
const UNPACKED_BYTES_MAX = 4 * 1024 * 1024;
const ENTRIES_MAX = 600;
/** npm install may fetch from the registry; a build on a loaded machine takes a while too. */
const STEP_MS_MAX = 300_000;

interface Packed {
  filename: string;
  size: number;
  unpackedSize: number;
  entryCount: number;
  files: { path: string; size: number }[];
}

let work = '';
let packed: Packed;
let app = '';
let installed = '';

/** The environment for npm and the package's processes: none of the npm_* settings a parent `npm test` passes down, but the registry and cache it uses. */
function childEnv(): NodeJS.ProcessEnv {
  const keep = new Set([
    'npm_config_registry',
    'npm_config_cache',
    'npm_config_userconfig',
    'npm_config_globalconfig',
  ]);
  return Object.fromEntries(
    Object.entries(process.env).filter(
      ([key]) => !key.toLowerCase().startsWith('npm_') || keep.has(key.toLowerCase()),
    ),
  );
}

/** Runs a command to its end; rejects, with its output, unless it exits 0. */
function run(command: string, args: string[], cwd: string): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd, env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), STEP_MS_MAX);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve({ stdout, stderr });
      else
        reject(
          new Error(`${command} ${args.join(' ')} in ${cwd}: exit ${code ?? signal}\n${stdout}\n${stderr}`),
        );
    });
  });
}

/** Every file under `dir`, relative to it, with / separators. */
function walk(dir: string, base = dir): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    return entry.isDirectory() ? walk(path, base) : [relative(base, path).split('\\').join('/')];
  });
}

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'memfabric-pack-'));
  // A copy of what the package and its build are made of (not a dist/ lying in the tree).
  const source = join(work, 'source');
  mkdirSync(source);
  const entries = new Set([
    ...manifest.files,
    'package.json',
    'LICENSE',
    'src',
    'tsconfig.json',
    'tsconfig.build.json',
  ]);
  entries.delete('dist');
  for (const entry of entries) {
    if (existsSync(join(root, entry))) cpSync(join(root, entry), join(source, entry), { recursive: true });
  }
  symlinkSync(join(root, 'node_modules'), join(source, 'node_modules')); // the build's compiler
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', work], source);
  packed = (JSON.parse(stdout.slice(stdout.indexOf('['))) as Packed[])[0]!;

  app = join(work, 'app');
  mkdirSync(app);
  writeFileSync(
    join(app, 'package.json'),
    JSON.stringify({ name: 'consumer', private: true, type: 'module' }),
  );
  await run(
    'npm',
    [
      'install',
      '--prefer-offline',
      '--no-audit',
      '--no-fund',
      '--loglevel=error',
      join(work, packed.filename),
    ],
    app,
  );
  installed = join(app, 'node_modules', manifest.name);
});

after(() => {
  if (work !== '') rmSync(work, { recursive: true, force: true });
});

test('the tarball holds the build with its types, the bin, README, LICENSE and docs; no tests, no source; bounded in size', () => {
  const paths = new Set(packed.files.map((file) => file.path));
  for (const required of [
    'package.json',
    'README.md',
    'LICENSE',
    'bin/memfabric.js',
    'dist/index.js',
    'dist/index.d.ts',
    'dist/cli/main.js',
  ]) {
    assert.ok(paths.has(required), `${required} is missing from the tarball`);
  }
  assert.match(readFileSync(join(root, 'LICENSE'), 'utf8'), /Apache License\s+Version 2\.0/);
  const topLevel = new Set(['dist', 'bin', 'docs', 'README.md', 'LICENSE', 'package.json']);
  for (const path of paths) {
    assert.ok(topLevel.has(path.split('/')[0]!), `${path} should not be in the tarball`);
    assert.doesNotMatch(path, /(^|\/)tests?\/|\.test\.[cm]?[jt]s$/, `${path}: a test in the tarball`);
    // Types for every module: a consumer imports any of them through the index.
    if (path.startsWith('dist/') && path.endsWith('.js')) {
      assert.ok(paths.has(path.replace(/\.js$/, '.d.ts')), `${path} has no .d.ts beside it`);
    }
  }
  assert.ok(packed.size <= PACKED_BYTES_MAX, `packed ${packed.size} bytes > ${PACKED_BYTES_MAX}`);
  assert.ok(
    packed.unpackedSize <= UNPACKED_BYTES_MAX,
    `unpacked ${packed.unpackedSize} bytes > ${UNPACKED_BYTES_MAX}`,
  );
  assert.ok(packed.entryCount <= ENTRIES_MAX, `${packed.entryCount} files > ${ENTRIES_MAX}`);
});

test('the installed package has no source map or map reference pointing at a missing file', () => {
  const files = walk(installed);
  assert.ok(files.includes('dist/index.js'));
  assert.ok(
    !files.some((file) => file.startsWith('src/')),
    'src/ is installed: then maps may point into it, but the package says it ships the build only',
  );
  for (const file of files) {
    const text = readFileSync(join(installed, file), 'utf8');
    if (file.endsWith('.map')) {
      const map = JSON.parse(text) as { sources: string[]; sourceRoot?: string };
      for (const source of map.sources) {
        const target = join(dirname(join(installed, file)), map.sourceRoot ?? '', source);
        assert.ok(existsSync(target), `${file} points at ${source}, which is not in the package`);
      }
    }
    for (const match of text.matchAll(/[#@] sourceMappingURL=(\S+)/g)) {
      if (match[1]!.startsWith('data:')) continue;
      assert.ok(
        existsSync(join(dirname(join(installed, file)), match[1]!)),
        `${file} refers to ${match[1]}, which is not in the package`,
      );
    }
  }
});

test('the build imports exactly the declared dependencies (and Node built-ins)', () => {
  const declared = new Set(Object.keys(manifest.dependencies));
  const builtins = new Set(builtinModules);
  const imported = new Set<string>();
  for (const file of walk(join(installed, 'dist')).filter((path) => path.endsWith('.js'))) {
    const text = readFileSync(join(installed, 'dist', file), 'utf8');
    const specifiers = [
      // import … from 'x', export … from 'x' (type-only imports are gone from the build)
      ...text.matchAll(/(?:^|\s)(?:import|export)\s[^'"]*?from\s+'([^']+)'/gm),
      // import 'x', import('x'), require('x'), createRequire(…)('x'), require.resolve('x/file')
      ...text.matchAll(/(?:^import\s|\bimport\(|\brequire\(|\)\(|\brequire\.resolve\()\s*'([^']+)'/gm),
    ].map((match) => match[1]!);
    for (const specifier of specifiers) {
      if (specifier.startsWith('.') || specifier.startsWith('node:') || builtins.has(specifier)) continue;
      const name = specifier.startsWith('@')
        ? specifier.split('/').slice(0, 2).join('/')
        : specifier.split('/')[0]!;
      assert.ok(declared.has(name), `dist/${file} imports ${specifier}: add ${name} to dependencies`);
      imported.add(name);
    }
  }
  // Also proves the scan sees imports at all.
  assert.deepEqual([...imported].sort(), [...declared].sort(), 'a dependency nothing in dist/ imports');
});

test('a strict NodeNext TypeScript project type-checks against the installed types, and a README example compiled with them runs', async () => {
  // The README's memory example, from the installed README, as a user would copy it.
  const readme = readFileSync(join(installed, 'README.md'), 'utf8');
  const example = codeBlocks('README.md', readme).find((block) => block.code.includes('new FramePool('));
  assert.ok(example, 'the installed README has the memory example');
  writeFileSync(join(app, 'readme-example.ts'), example.code);
  writeFileSync(
    join(app, 'consumer.ts'),
    [
      "import { AddressSpace, ErrorCodes, FramePool, MemfabricError, parseSize, type ApplianceOptions, type ErrorCode } from 'memfabric';",
      "import { Appliance, Fabric, Heap, NbdClient, Pager } from 'memfabric';",
      '',
      "const pool = new FramePool({ capacity: '1MiB' });",
      "const space = new AddressSpace(pool, { size: '1GiB' });",
      'const value: number = space.readU32(0);',
      'const code: ErrorCode = ErrorCodes.POOL_EXHAUSTED;',
      "const options: ApplianceOptions = { memory: '64MiB', nbd: { port: 0 }, http: { port: 0 } };",
      'export const uses = [value, code, options, parseSize, MemfabricError, Appliance, Fabric, Heap, NbdClient, Pager];',
      // The types are real, not `any`: misuse is an error.
      '// @ts-expect-error capacity is a size, not a boolean',
      'new FramePool({ capacity: true });',
      '// @ts-expect-error readU32 returns a number',
      'export const wrong: string = space.readU32(0);',
      'space.destroy();',
    ].join('\n'),
  );
  writeFileSync(
    join(app, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        strict: true,
        target: 'ES2022',
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        // Node's own types, as a user has them from @types/node.
        types: ['node'],
        typeRoots: [join(root, 'node_modules', '@types')],
        outDir: 'out',
      },
      include: ['*.ts'],
    }),
  );
  await run(process.execPath, [tsc, '-p', 'tsconfig.json', '--pretty', 'false'], app);
  const { stdout } = await run(process.execPath, [join('out', 'readme-example.js')], app);
  assert.equal(brokenPromise(example.code, stdout), undefined, brokenPromise(example.code, stdout));
});

test('npx memfabric --help and --version run the installed build, without tsx', async () => {
  assert.ok(
    !existsSync(join(app, 'node_modules', 'tsx')),
    'tsx is a devDependency: it must not come with the package',
  );
  const help = await run('npx', ['--no', '--', 'memfabric', '--help'], app);
  assert.match(help.stdout, /^Usage: memfabric/m);
  assert.match(help.stdout, /^\s+appliance\b/m);
  const version = await run('npx', ['--no', '--', 'memfabric', '--version'], app);
  assert.equal(version.stdout.trim(), manifest.version);
});

test('the package is ESM-only, as the README says: import works, require is refused', async () => {
  const imported = await run(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      "const m = await import('memfabric'); console.log(typeof m.Appliance.start);",
    ],
    app,
  );
  assert.equal(imported.stdout.trim(), 'function');
  // What the README tells a user matches package.json.
  const readme = readFileSync(join(installed, 'README.md'), 'utf8');
  assert.match(readme, /ESM-only/);
  assert.ok(
    readme.includes(`Node.js ${manifest.engines.node.replace('>=', '')} or later`),
    'the README names the engines.node minimum',
  );
  await assert.rejects(
    run(process.execPath, ['-e', "require('memfabric')"], app),
    /ERR_PACKAGE_PATH_NOT_EXPORTED|ERR_REQUIRE_ESM/,
  );
});
