/**
 * The dashboard's browser code, inlined into the page (no build step, no CDN). It polls
 * GET /v1/dashboard every POLL_MS, turns cumulative counters into rates by differencing
 * successive answers, and keeps the last HISTORY_POINTS samples for three uPlot charts (served
 * by the appliance from the uplot package).
 *
 * Authentication: the page sends `Authorization: Bearer <token>` when it has a token: from the
 * URL fragment (`/#token=…`, never sent to the server, removed from the address bar at once)
 * or typed into the login field; either is kept in sessionStorage for the tab's life. Without
 * one it asks anonymously, which works where reads are open (loopback, `--read-access open`).
 *
 * Every value from the appliance is written with textContent, never as HTML: region and tenant
 * names are chosen by API callers. Elements carry data-value attributes with raw numbers so a
 * test can compare them with the API.
 *
 * Written as plain ES2020 in a string: no backticks and no dollar-brace inside.
 */
export const DASHBOARD_SCRIPT = String.raw`
(function () {
  'use strict';
  var POLL_MS = 1000;
  var HISTORY_POINTS = 300;
  var LATENCY_WINDOW_MS = 10000;
  var TOKEN_KEY = 'memfabric-dashboard-token';
  var $ = function (id) { return document.getElementById(id); };

  // A token in the fragment (at load, or pasted into the address bar later) is kept for this tab
  // and taken out of the address bar, so it is neither bookmarked nor shown.
  function takeFragment() {
    var fragment = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (!fragment) return false;
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(fragment[1]));
    history.replaceState(null, '', location.pathname + location.search);
    return true;
  }
  takeFragment();
  window.addEventListener('hashchange', function () { if (takeFragment()) poll(); });

  function size(bytes) {
    if (bytes === null || bytes === undefined) return '?';
    var sign = bytes < 0 ? '-' : '';
    var n = Math.abs(bytes);
    var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return sign + (i === 0 || n >= 100 ? Math.round(n) : n.toFixed(n >= 10 ? 1 : 2)) + ' ' + units[i];
  }
  function rate(n) { return n >= 100 ? Math.round(n).toString() : n.toFixed(1); }
  function mbps(bytesPerSecond) { return (bytesPerSecond / 1e6).toFixed(2); }
  function seconds(s) {
    if (s === null) return '–';
    if (s < 0.001) return (s * 1e6).toFixed(0) + ' µs';
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 1) + ' ms';
    return s.toFixed(2) + ' s';
  }
  function duration(ms) {
    var s = Math.floor(ms / 1000);
    var d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    return (d ? d + 'd ' : '') + (d || h ? h + 'h ' : '') + m + 'm ' + (s % 60) + 's';
  }
  function set(id, text, value) {
    var el = $(id);
    el.textContent = text;
    if (value !== undefined) el.dataset.value = String(value);
  }
  function cell(row, field, text, value) {
    var td = document.createElement('td');
    td.dataset.field = field;
    td.textContent = text;
    if (value !== undefined) td.dataset.value = String(value);
    row.appendChild(td);
    return td;
  }

  // The q-quantile of per-bucket counts (upper bound of the bucket it falls in; null: no data).
  function quantile(bounds, counts, q) {
    var total = 0;
    for (var i = 0; i < counts.length; i++) total += counts[i];
    if (total === 0) return null;
    var rank = q * total, seen = 0;
    for (var j = 0; j < counts.length; j++) {
      seen += counts[j];
      if (seen >= rank) return j < bounds.length ? bounds[j] : bounds[bounds.length - 1];
    }
    return bounds[bounds.length - 1];
  }

  function chart(id, title, series) {
    var el = $(id);
    var data = [[]];
    var opts = {
      title: title, width: 380, height: 170,
      scales: { x: { time: true } },
      series: [{}].concat(series.map(function (s) { return { label: s[0], stroke: s[1], width: 2 }; })),
      axes: [{}, { size: 60, values: series.length && series[0][2] ? function (u, ticks) { return ticks.map(series[0][2]); } : undefined }],
    };
    series.forEach(function () { data.push([]); });
    var plot = window.uPlot ? new window.uPlot(opts, data, el) : null;
    return {
      push: function (t, values) {
        data[0].push(t);
        values.forEach(function (v, i) { data[i + 1].push(v); });
        if (data[0].length > HISTORY_POINTS) data.forEach(function (d) { d.shift(); });
        if (plot) plot.setData(data);
        el.dataset.points = String(data[0].length);
      },
    };
  }
  var charts = {
    iops: chart('chart-iops', 'NBD operations/s', [['ops/s', '#2a6']]),
    mbps: chart('chart-mbps', 'MB/s', [['read', '#36c'], ['write', '#c63']]),
    memory: chart('chart-memory', 'Memory', [['used', '#a3c', size], ['logical', '#888', size]]),
  };

  var previous = null;
  var latencyHistory = [];

  function token() { return sessionStorage.getItem(TOKEN_KEY); }

  function showLogin(message) {
    $('login').hidden = false;
    $('login-message').textContent = message;
    $('status').textContent = 'not signed in';
  }
  $('login').addEventListener('submit', function (event) {
    event.preventDefault();
    var value = $('token').value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $('token').value = '';
    poll();
  });

  function render(view) {
    var dt = previous ? (view.now - previous.now) / 1000 : 0;
    var before = {};
    if (previous) previous.regions.forEach(function (r) { before[r.name] = r; });
    var perSecond = function (now, then) { return dt > 0 ? Math.max(0, now - then) / dt : 0; };

    set('version', 'memfabric ' + view.version + ' on Node.js ' + view.node);
    set('uptime', duration(view.now - view.startedAt), Math.round((view.now - view.startedAt) / 1000));
    set('endpoint', view.nbdEndpoint.host + ':' + view.nbdEndpoint.port);

    var iops = previous ? perSecond(view.nbd.requests, previous.nbd.requests) : 0;
    var readRate = previous ? perSecond(view.nbd.bytesRead, previous.nbd.bytesRead) : 0;
    var writeRate = previous ? perSecond(view.nbd.bytesWritten, previous.nbd.bytesWritten) : 0;
    set('total-iops', rate(iops), iops);
    set('total-mbps', mbps(readRate) + ' read, ' + mbps(writeRate) + ' write', readRate + writeRate);
    set('connections', String(view.nbd.connectionsOpen), view.nbd.connectionsOpen);
    set('requests', String(view.nbd.requests), view.nbd.requests);
    var errnos = Object.keys(view.nbd.errorsByErrno).map(function (k) { return k + ' ' + view.nbd.errorsByErrno[k]; });
    set('errors', view.nbd.errors + (errnos.length ? ' (' + errnos.join(', ') + ')' : ''), view.nbd.errors);

    // Latency over the last LATENCY_WINDOW_MS: this answer's buckets minus the oldest kept.
    latencyHistory.push({ at: view.now, counts: view.latency.counts });
    while (latencyHistory.length > 2 && view.now - latencyHistory[1].at >= LATENCY_WINDOW_MS) latencyHistory.shift();
    var base = latencyHistory[0];
    var recent = view.latency.counts.map(function (c, i) { return latencyHistory.length > 1 ? c - base.counts[i] : c; });
    set('latency', seconds(quantile(view.latency.boundsSeconds, recent, 0.5)) + ' / ' + seconds(quantile(view.latency.boundsSeconds, recent, 0.99)));

    var m = view.memory;
    set('memory-used', size(m.usedBytes) + ' of ' + size(m.capacityBytes), m.usedBytes);
    set('memory-logical', size(m.logicalBytes), m.logicalBytes);
    $('memory-bar').style.width = (m.capacityBytes ? (100 * m.usedBytes) / m.capacityBytes : 0).toFixed(1) + '%';
    var g = view.merger;
    if (g) {
      set('merge-saving', size(g.bytesSaved) + ' gross, ' + size(g.bytesSavedNet) + ' net of ' + size(g.metadataBytes) + ' of tables', g.bytesSaved);
      set('merge-scan', (100 * g.scanFraction).toFixed(0) + '% through scan ' + (g.fullScans + 1) + (g.scanRegion === null ? '' : ' (in ' + g.scanRegion + ')') +
        ', ' + Math.round(g.pagesVisitedPerSecond) + ' pages/s, ' + (100 * g.cpuShare).toFixed(1) + '% of a core (set ' + (100 * g.cpuShareTarget).toFixed(1) + '%)', g.scanFraction);
      $('merge-bar').style.width = (100 * g.scanFraction).toFixed(1) + '%';
    } else {
      set('merge-saving', 'merging is off');
      set('merge-scan', '–');
    }

    set('regions-count', String(view.regions.length), view.regions.length);
    var body = $('regions');
    body.textContent = '';
    view.regions.forEach(function (r) {
      var row = document.createElement('tr');
      row.dataset.region = r.name;
      var was = before[r.name];
      var ops = was ? perSecond(r.ops, was.ops) : 0;
      var bytes = was ? perSecond(r.bytesRead + r.bytesWritten, was.bytesRead + was.bytesWritten) : 0;
      cell(row, 'name', r.name + (r.default ? ' (default)' : ''));
      cell(row, 'tenant', r.tenant === null ? '?' : r.tenant);
      cell(row, 'size', size(r.size), r.size);
      var state = r.state === 'ready' ? (r.readOnly ? 'read-only' : 'read-write') : r.state + (r.error ? ': ' + r.error : '');
      if (r.clonedFrom) state += ', clone of ' + r.clonedFrom;
      if (r.migrating) state += ', migrating';
      cell(row, 'state', state);
      cell(row, 'connections', String(r.connections), r.connections);
      cell(row, 'iops', rate(ops), ops);
      cell(row, 'mbps', mbps(bytes), bytes);
      cell(row, 'resident', size(r.residentBytes), r.residentBytes);
      cell(row, 'shared', size(r.sharedBytes), r.sharedBytes);
      cell(row, 'bytesRead', size(r.bytesRead), r.bytesRead);
      cell(row, 'bytesWritten', size(r.bytesWritten), r.bytesWritten);
      var save = '–';
      if (r.save) {
        save = r.save.lastError ? 'save failed: ' + r.save.lastError : r.save.saving ? 'saving' :
          r.save.lastSavedAt ? 'saved ' + duration(view.now - r.save.lastSavedAt) + ' ago' : 'not saved yet';
      }
      cell(row, 'save', save);
      var uri = cell(row, 'uri', '');
      var code = document.createElement('code');
      code.textContent = 'nbdinfo ' + r.uri;
      uri.appendChild(code);
      body.appendChild(row);
    });

    var tenants = $('tenants');
    tenants.textContent = '';
    view.tenants.forEach(function (t) {
      var row = document.createElement('tr');
      row.dataset.tenant = t.tenant;
      cell(row, 'tenant', t.tenant);
      cell(row, 'regions', String(t.regions), t.regions);
      cell(row, 'resident', size(t.residentBytes), t.residentBytes);
      cell(row, 'bytesRead', size(t.bytesRead), t.bytesRead);
      cell(row, 'bytesWritten', size(t.bytesWritten), t.bytesWritten);
      tenants.appendChild(row);
    });

    var migrating = view.regions.filter(function (r) { return r.migrating; }).map(function (r) { return r.name; });
    set('migrations', migrating.length ? migrating.join(', ') : 'none', migrating.length);
    if (view.rebuilds) {
      var parts = view.rebuilds.inProgress.map(function (p) {
        return p.tenant + '/' + p.name + ' ' + (p.bytesTotal ? Math.round((100 * p.bytesDone) / p.bytesTotal) : 0) + '% (' + mbps(p.rate) + ' MB/s)';
      });
      set('rebuilds', (parts.length ? parts.join(', ') : 'none in progress') + '; ' + view.rebuilds.queued + ' queued, ' + view.rebuilds.failed + ' failed', view.rebuilds.inProgress.length);
    } else {
      set('rebuilds', 'not the fleet controller here', 0);
    }

    var t = view.now / 1000;
    if (previous) {
      charts.iops.push(t, [iops]);
      charts.mbps.push(t, [readRate / 1e6, writeRate / 1e6]);
    }
    charts.memory.push(t, [m.usedBytes, m.logicalBytes]);
    previous = view;
  }

  var timer = null;
  function poll() {
    clearTimeout(timer);
    var headers = {};
    var t = token();
    if (t) headers.authorization = 'Bearer ' + t;
    fetch('/v1/dashboard', { headers: headers, cache: 'no-store' })
      .then(function (response) {
        if (response.status === 401 || response.status === 403) {
          return response.json().then(function (body) {
            if (t) sessionStorage.removeItem(TOKEN_KEY);
            showLogin(body && body.error ? body.error.message : 'this appliance needs a token');
          });
        }
        if (!response.ok) throw new Error('HTTP ' + response.status);
        return response.json().then(function (view) {
          $('login').hidden = true;
          var summary = $('summary');
          if (summary) summary.hidden = true;
          $('live').hidden = false;
          render(view);
          $('status').textContent = 'live, updated ' + new Date(view.now).toLocaleTimeString();
          document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
          timer = setTimeout(poll, POLL_MS);
        });
      })
      .catch(function (error) {
        $('status').textContent = 'appliance unreachable (' + error.message + '); retrying';
        timer = setTimeout(poll, POLL_MS * 3);
      });
  }
  poll();
})();
`;
