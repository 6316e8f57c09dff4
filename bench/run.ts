/**
 * `npm run bench [-- --quick] [-- --only NAME]`: runs every suite, prints one table, writes
 * bench/results.json (an array of { id, unit, value, baseline, baselineValue, ratio }).
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { printTable, type BenchContext, type Row, type Suite } from './harness.js';
import { applianceSuite } from './appliance.bench.js';
import { memorySuite } from './memory.bench.js';
import { fabricSuite } from './fabric.bench.js';
import { tierSuite } from './tier.bench.js';
import { hostileSuite } from './hostile.bench.js';
import { restartSuite } from './restart.bench.js';
import { tlsSuite } from './tls.bench.js';
import { authSuite } from './auth.bench.js';
import { nbdStoreSuite } from './nbd-store.bench.js';
import { heapSuite } from './heap.bench.js';
import { heapValuesSuite } from './heap-values.bench.js';
import { heapCollectionsSuite } from './heap-collections.bench.js';
import { durableSuite } from './durable.bench.js';
import { fleetSuite } from './fleet.bench.js';
import { mergerSuite } from './merger.bench.js';
import { regionMigrationSuite } from './region-migration.bench.js';
import { postcopySuite } from './postcopy.bench.js';
import { migrateSuite } from './migrate.bench.js';
import { standbySuite } from './standby.bench.js';

const suites: Suite[] = [
  memorySuite,
  mergerSuite,
  applianceSuite,
  fabricSuite,
  tierSuite,
  hostileSuite,
  restartSuite,
  tlsSuite,
  authSuite,
  nbdStoreSuite,
  heapSuite,
  heapValuesSuite,
  heapCollectionsSuite,
  durableSuite,
  fleetSuite,
  regionMigrationSuite,
  postcopySuite,
  migrateSuite,
  standbySuite,
];

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string', multiple: true },
    repeats: { type: 'string' },
  },
});

const quick = values.quick ?? false;
const repeats = values.repeats ? Number(values.repeats) : quick ? 3 : 7;
const rows: Row[] = [];
const context: BenchContext = {
  quick,
  repeats,
  record(row) {
    const ratio = row.baselineValue === 0 ? Number.NaN : row.value / row.baselineValue;
    rows.push({ ...row, ratio });
    console.error(
      `  ${row.id}: ${row.value.toPrecision(4)} ${row.unit} (baseline ${row.baselineValue.toPrecision(4)})`,
    );
  },
  log(message) {
    console.error(`  ${message}`);
  },
};

const started = performance.now();
for (const suite of suites) {
  if (values.only && !values.only.includes(suite.name)) continue;
  console.error(`[bench] ${suite.name}${quick ? ' (quick)' : ''}, medians of ${repeats} runs`);
  await suite.run(context);
}
console.log(printTable(rows));
console.log(
  `\n${rows.length} figures in ${((performance.now() - started) / 1000).toFixed(1)} s; ratio = ours / baseline`,
);
const results = rows.map(({ id, unit, value, baseline, baselineValue, ratio }) => ({
  id,
  unit,
  value,
  baseline,
  baselineValue,
  ratio,
}));
writeFileSync(new URL('./results.json', import.meta.url), `${JSON.stringify(results, null, 2)}\n`);
