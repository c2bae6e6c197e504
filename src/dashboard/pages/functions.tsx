/** The functions: status, instances, traffic and latency over the last hour; and a form to create one. */
import { useState } from 'preact/hooks';
import { api, ApiError, fnPath, type FunctionView, type InstanceInfo, type InvocationStats } from '../api.js';
import { Chart } from '../chart.js';
import { ms, percent, perMinute } from '../format.js';
import { go, usePoll } from '../hooks.js';
import { readyCount, StatusBadge } from '../status.js';

const LIST_POLL_MS = 5000;
const STATS_POLL_MS = 15_000;

function FunctionRow({ fn }: { fn: FunctionView }) {
  const instances = usePoll(() => api<InstanceInfo[]>('GET', `${fnPath(fn.name)}/instances`), LIST_POLL_MS, [fn.name]);
  const stats = usePoll(() => api<InvocationStats>('GET', `${fnPath(fn.name)}/stats?window=3600&step=60`), STATS_POLL_MS, [fn.name]);
  const t = stats.data?.totals;
  return (
    <tr>
      <th scope="row" data-label="Function">
        <a href={`#/functions/${encodeURIComponent(fn.name)}`}>{fn.name}</a>
      </th>
      <td data-label="Status">
        <StatusBadge fn={fn} instances={instances.data} />
      </td>
      <td data-label="Instances" class="num">
        {readyCount(instances.data) ?? '…'}
      </td>
      <td data-label="Requests" class="num">
        {t ? `${t.count} · ${perMinute(t.rate_per_s)}` : '…'}
      </td>
      <td data-label="Errors" class="num">
        {t ? percent(t.error_rate) : '…'}
      </td>
      <td data-label="p50 / p99" class="num">
        {t ? `${ms(t.p50_ms)} / ${ms(t.p99_ms)}` : '…'}
      </td>
      <td data-label="Last hour" class="charts">
        {stats.data && (
          <div class="sparklines">
            <Chart stats={stats.data} kind="requests" label={`${fn.name}: ${t!.count} requests, ${t!.errors} errors in the last hour`} />
            <Chart
              stats={stats.data}
              kind="latency"
              label={`${fn.name}: latency p50 ${ms(t!.p50_ms)}, p99 ${ms(t!.p99_ms)} over the last hour`}
            />
          </div>
        )}
      </td>
    </tr>
  );
}

/** KEY=value lines into env vars; a line without "=" is an error naming it. */
export function parseEnv(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split('\n').map((l) => l.trim())) {
    if (!line || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    if (eq <= 0) throw new Error(`environment: "${line}" is not KEY=value`);
    env[line.slice(0, eq).trim()] = line.slice(eq + 1);
  }
  return env;
}

function CreateForm({ onCreated }: { onCreated: (name: string) => void }) {
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget as HTMLFormElement);
    const num = (k: string) => (form.get(k) ? Number(form.get(k)) : undefined);
    setBusy(true);
    setError(undefined);
    try {
      const body = {
        name: String(form.get('name')).trim(),
        runtime: 'node',
        entrypoint: String(form.get('entrypoint') ?? '').trim() || undefined,
        memory_mb: num('memory_mb'),
        timeout_ms: num('timeout_ms'),
        idle_timeout_s: num('idle_timeout_s'),
        env_vars: parseEnv(String(form.get('env') ?? '')),
      };
      const fn = await api<FunctionView>('POST', '/api/functions', body);
      onCreated(fn.name);
    } catch (err) {
      setError((err as Error).message);
    } finally {
      setBusy(false);
    }
  };
  return (
    <details class="panel">
      <summary>New function</summary>
      <form class="grid-form" onSubmit={submit}>
        <label>
          Name <input name="name" required />
        </label>
        <label>
          Entry point (optional) <input name="entrypoint" placeholder="handler.js" />
        </label>
        <label>
          Memory (MB) <input name="memory_mb" type="number" min="32" placeholder="128" />
        </label>
        <label>
          Timeout (ms) <input name="timeout_ms" type="number" min="1" placeholder="30000" />
        </label>
        <label>
          Idle timeout (s) <input name="idle_timeout_s" type="number" min="1" placeholder="300" />
        </label>
        <label class="wide">
          Environment (KEY=value, one a line) <textarea name="env" rows={3} />
        </label>
        <div class="wide">
          <button type="submit" disabled={busy}>
            Create
          </button>{' '}
          <span class="hint">then deploy its code (a zip) on its page</span>
        </div>
        <p class="error wide" role="alert">
          {error}
        </p>
      </form>
    </details>
  );
}

export function FunctionsPage() {
  const list = usePoll(() => api<FunctionView[]>('GET', '/api/functions'), LIST_POLL_MS, []);
  const functions = list.data ? [...list.data].sort((a, b) => a.name.localeCompare(b.name)) : undefined;
  return (
    <>
      <h1 tabIndex={-1}>Functions</h1>
      <CreateForm onCreated={(name) => go('functions', name)} />
      {list.error && !(list.error instanceof ApiError && list.error.status === 401) && (
        <p class="error" role="alert">
          {list.error.message}
        </p>
      )}
      {functions?.length === 0 && <p>No functions yet: create one above, then drop a zip of its code on its page.</p>}
      {functions && functions.length > 0 && (
        <table class="functions responsive">
          <caption class="visually-hidden">Functions, with their traffic over the last hour</caption>
          <thead>
            <tr>
              <th scope="col">Function</th>
              <th scope="col">Status</th>
              <th scope="col">Instances</th>
              <th scope="col">Requests (1 h)</th>
              <th scope="col">Errors</th>
              <th scope="col">p50 / p99</th>
              <th scope="col">Last hour</th>
            </tr>
          </thead>
          <tbody>
            {functions.map((fn) => (
              <FunctionRow key={fn.id} fn={fn} />
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}
