/** One function: traffic, deploy, invoke, live logs, instances, invocations, configuration, delete. */
import { useEffect, useRef, useState } from 'preact/hooks';
import {
  api,
  fnPath,
  followLogs,
  type FunctionView,
  type InstanceInfo,
  type InvocationRecord,
  type InvocationStats,
  type LogLine,
  uploadCode,
} from '../api.js';
import { Chart } from '../chart.js';
import { ago, bytes, dateTime, ms, percent, perMinute, time } from '../format.js';
import { go, usePoll } from '../hooks.js';
import { readyCount, StatusBadge } from '../status.js';

const POLL_MS = 2000;

function Traffic({ name }: { name: string }) {
  const stats = usePoll(() => api<InvocationStats>('GET', `${fnPath(name)}/stats?window=3600&step=60`), 10_000, [name]);
  const s = stats.data;
  if (!s) return null;
  const t = s.totals;
  return (
    <section class="panel wide" aria-labelledby="traffic">
      <h2 id="traffic">Last hour</h2>
      <dl class="totals">
        <div>
          <dt>Requests</dt>
          <dd>
            {t.count} ({perMinute(t.rate_per_s)})
          </dd>
        </div>
        <div>
          <dt>Errors</dt>
          <dd>
            {t.errors} ({percent(t.error_rate)})
          </dd>
        </div>
        <div>
          <dt>Cold starts</dt>
          <dd>{t.cold_starts}</dd>
        </div>
        <div>
          <dt>p50 / p99</dt>
          <dd>
            {ms(t.p50_ms)} / {ms(t.p99_ms)}
          </dd>
        </div>
      </dl>
      {!s.complete && <p class="hint">Busy: only the last 1000 invocations are kept, from {time(s.since)} on.</p>}
      <div class="chart-pair">
        <Chart
          stats={s}
          kind="requests"
          height={140}
          axes
          label={`${t.count} requests and ${t.errors} errors per minute over the last hour`}
        />
        <Chart
          stats={s}
          kind="latency"
          height={140}
          axes
          label={`latency per minute over the last hour: p50 ${ms(t.p50_ms)}, p99 ${ms(t.p99_ms)}`}
        />
      </div>
    </section>
  );
}

function Deploy({ fn, onDeployed }: { fn: FunctionView; onDeployed: () => void }) {
  const [progress, setProgress] = useState<number>();
  const [message, setMessage] = useState<{ ok: boolean; text: string }>();
  const [over, setOver] = useState(false);
  const input = useRef<HTMLInputElement>(null);
  const upload = async (file: File | undefined) => {
    if (!file) return;
    setMessage(undefined);
    setProgress(0);
    try {
      const result = await uploadCode(fn.name, file, setProgress);
      setMessage({ ok: true, text: `Deployed ${file.name}: version ${result.version}, ${bytes(result.code_size)}` });
      onDeployed();
    } catch (err) {
      setMessage({ ok: false, text: `Upload rejected: ${(err as Error).message}` });
    } finally {
      setProgress(undefined);
      if (input.current) input.current.value = '';
    }
  };
  return (
    <section class="panel" aria-labelledby="deploy">
      <h2 id="deploy">Code</h2>
      <dl class="facts">
        <dt>Version</dt>
        <dd>{fn.version}</dd>
        <dt>Hash</dt>
        <dd class="mono">{fn.code_hash ? fn.code_hash.slice(0, 16) : 'no code yet'}</dd>
        <dt>Size</dt>
        <dd>{bytes(fn.code_size)}</dd>
        <dt>Updated</dt>
        <dd>{dateTime(fn.updated_at)}</dd>
      </dl>
      <label
        class={`dropzone${over ? ' over' : ''}`}
        onDragOver={(e) => {
          e.preventDefault();
          setOver(true);
        }}
        onDragLeave={() => setOver(false)}
        onDrop={(e) => {
          e.preventDefault();
          setOver(false);
          upload(e.dataTransfer?.files[0]);
        }}
      >
        Drop a .zip (or .tar.gz) of the code here, or <span class="button">choose a file</span>
        <input
          ref={input}
          class="visually-hidden"
          type="file"
          accept=".zip,.tar.gz,.tgz,application/zip,application/gzip"
          onChange={(e) => upload((e.currentTarget as HTMLInputElement).files?.[0])}
        />
      </label>
      {progress !== undefined && (
        <progress max={1} value={progress} aria-label="Upload progress" aria-valuetext={`${Math.round(progress * 100)} % uploaded`}>
          {Math.round(progress * 100)} %
        </progress>
      )}
      <p class={message?.ok ? 'ok' : 'error'} role="status">
        {message?.text}
      </p>
    </section>
  );
}

interface InvokeResult {
  status: number;
  statusText: string;
  ms: number;
  headers: [string, string][];
  body: string;
  requestId: string | null;
}

function Invoke({ name, onInvoked }: { name: string; onInvoked: () => void }) {
  const [result, setResult] = useState<InvokeResult>();
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget as HTMLFormElement);
    const method = String(form.get('method'));
    const path = String(form.get('path') || '/');
    const body = String(form.get('body') ?? '');
    setBusy(true);
    setError(undefined);
    const started = performance.now();
    try {
      // The function's own route: no API token (it is never sent to functions).
      const res = await fetch(`/functions/${encodeURIComponent(name)}${path.startsWith('/') ? path : `/${path}`}`, {
        method,
        body: method === 'GET' || method === 'HEAD' || !body ? undefined : body,
      });
      const text = await res.text();
      setResult({
        status: res.status,
        statusText: res.statusText,
        ms: performance.now() - started,
        headers: [...res.headers.entries()],
        body: text,
        requestId: res.headers.get('x-request-id'),
      });
      onInvoked();
    } catch (err) {
      setError((err as Error).message);
    } finally {
      setBusy(false);
    }
  };
  return (
    <section class="panel" aria-labelledby="invoke">
      <h2 id="invoke">Invoke</h2>
      <form class="invoke" onSubmit={submit}>
        <label>
          Method
          <select name="method">
            {['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD'].map((m) => (
              <option key={m}>{m}</option>
            ))}
          </select>
        </label>
        <label class="grow">
          Path <input name="path" defaultValue="/" />
        </label>
        <label class="wide">
          Body <textarea name="body" rows={3} />
        </label>
        <button type="submit" disabled={busy}>
          Send
        </button>
      </form>
      <div aria-live="polite" class="invoke-result">
        {error && <p class="error">{error}</p>}
        {result && (
          <>
            <p>
              <strong class={result.status >= 400 ? 'error' : 'ok'}>
                HTTP {result.status} {result.statusText}
              </strong>{' '}
              in {ms(result.ms)}, request id <code>{result.requestId}</code>
            </p>
            <details>
              <summary>Headers</summary>
              <pre>{result.headers.map(([k, v]) => `${k}: ${v}`).join('\n')}</pre>
            </details>
            <pre class="body">{result.body}</pre>
          </>
        )}
      </div>
    </section>
  );
}

const LOG_BACKLOG = 100;
const LOG_KEPT = 500;

function Logs({ name }: { name: string }) {
  const [lines, setLines] = useState<LogLine[]>([]);
  const [state, setState] = useState<'following' | 'paused' | 'failed'>('following');
  const [error, setError] = useState<string>();
  const box = useRef<HTMLDivElement>(null);
  useEffect(() => {
    if (state !== 'following') return;
    const abort = new AbortController();
    setLines([]);
    followLogs(name, LOG_BACKLOG, (more) => setLines((old) => [...old, ...more].slice(-LOG_KEPT)), abort.signal).catch((err) => {
      setError((err as Error).message);
      setState('failed');
    });
    return () => abort.abort();
  }, [name, state]);
  useEffect(() => {
    const el = box.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [lines]);
  return (
    <section class="panel wide" aria-labelledby="logs">
      <h2 id="logs">Logs</h2>
      <p class="toolbar">
        <span class="hint">
          {state === 'following' ? 'Live: new lines appear as they are written.' : state === 'paused' ? 'Paused.' : error}
        </span>
        <button type="button" class="secondary" onClick={() => setState(state === 'following' ? 'paused' : 'following')}>
          {state === 'following' ? 'Pause' : 'Follow'}
        </button>
      </p>
      {/* biome-ignore lint/a11y/noNoninteractiveTabindex: a scrolling region must be reachable by keyboard to be scrolled */}
      <div class="log" ref={box} role="log" tabIndex={0} aria-label={`${name} log lines`}>
        <ol>
          {lines.map((l) => (
            <li key={l.id} class={`log-${l.stream}`}>
              <time dateTime={l.time}>{time(l.time)}</time> <span class="stream">{l.stream}</span>{' '}
              {l.instance_id && <span class="instance">{l.instance_id.slice(0, 8)}</span>} <span class="message">{l.message}</span>
            </li>
          ))}
        </ol>
      </div>
    </section>
  );
}

function Instances({ instances }: { instances: InstanceInfo[] | undefined }) {
  return (
    <section class="panel" aria-labelledby="instances">
      <h2 id="instances">Instances</h2>
      {instances?.length === 0 && <p>None: scaled to zero (the next request starts one).</p>}
      {instances && instances.length > 0 && (
        <table class="responsive">
          <thead>
            <tr>
              <th scope="col">Instance</th>
              <th scope="col">State</th>
              <th scope="col">Version</th>
              <th scope="col">Started</th>
              <th scope="col">In flight</th>
              <th scope="col">Served</th>
              {instances.some((i) => i.worker_id) && <th scope="col">Worker</th>}
            </tr>
          </thead>
          <tbody>
            {instances.map((i) => (
              <tr key={i.id}>
                <td data-label="Instance" class="mono">
                  {i.id}
                </td>
                <td data-label="State">{i.state}</td>
                <td data-label="Version">{i.version}</td>
                <td data-label="Started">{ago(i.started_at)}</td>
                <td data-label="In flight">{i.in_flight}</td>
                <td data-label="Served">{i.served}</td>
                {i.worker_id && <td data-label="Worker">{i.worker_id}</td>}
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function Invocations({ name }: { name: string }) {
  const [errorsOnly, setErrorsOnly] = useState(false);
  const [coldOnly, setColdOnly] = useState(false);
  const query = `limit=20${errorsOnly ? '&status=error' : ''}${coldOnly ? '&cold_start=true' : ''}`;
  const list = usePoll(() => api<InvocationRecord[]>('GET', `${fnPath(name)}/invocations?${query}`), POLL_MS, [name, query]);
  return (
    <section class="panel wide" aria-labelledby="invocations">
      <h2 id="invocations">Invocations</h2>
      <fieldset class="filters">
        <legend class="visually-hidden">Show only</legend>
        <label>
          <input type="checkbox" checked={errorsOnly} onChange={(e) => setErrorsOnly((e.currentTarget as HTMLInputElement).checked)} />
          errors
        </label>
        <label>
          <input type="checkbox" checked={coldOnly} onChange={(e) => setColdOnly((e.currentTarget as HTMLInputElement).checked)} /> cold
          starts
        </label>
      </fieldset>
      {list.data?.length === 0 && <p>None {errorsOnly || coldOnly ? 'that match' : 'yet'}.</p>}
      {list.data && list.data.length > 0 && (
        <table class="responsive invocations">
          <thead>
            <tr>
              <th scope="col">Started</th>
              <th scope="col">Request id</th>
              <th scope="col">Status</th>
              <th scope="col">Duration</th>
              <th scope="col">Cold</th>
              <th scope="col">Error</th>
            </tr>
          </thead>
          <tbody>
            {list.data.map((inv) => (
              <tr key={inv.id}>
                <td data-label="Started">{time(inv.started_at)}</td>
                <td data-label="Request id" class="mono">
                  {inv.request_id}
                </td>
                <td data-label="Status" class={inv.error || inv.status >= 500 ? 'error' : undefined}>
                  {inv.status}
                </td>
                <td data-label="Duration">{ms(inv.duration_ms)}</td>
                <td data-label="Cold">{inv.cold_start ? 'cold' : ''}</td>
                <td data-label="Error">{inv.error ?? ''}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function Configuration({ fn }: { fn: FunctionView }) {
  const rows: [string, string | number][] = [
    ['Runtime', fn.runtime],
    ['Entry point', fn.entrypoint ?? '(found in the code)'],
    ['Memory', `${fn.memory_mb} MB`],
    ['vCPU', fn.vcpu],
    ['Timeout', `${fn.timeout_ms} ms`],
    ['Concurrency', fn.concurrency],
    ['Instances', `${fn.min_instances}–${fn.max_instances}`],
    ['Idle timeout', `${fn.idle_timeout_s} s`],
    ['Event format', fn.event_format],
  ];
  const env = Object.entries(fn.env_vars);
  return (
    <section class="panel" aria-labelledby="config">
      <h2 id="config">Configuration</h2>
      <dl class="facts">
        {rows.map(([k, v]) => (
          <>
            <dt>{k}</dt>
            <dd>{v}</dd>
          </>
        ))}
      </dl>
      <h3>Environment</h3>
      {env.length === 0 ? (
        <p>No env vars.</p>
      ) : (
        <dl class="facts env">
          {env.map(([k, v]) => (
            <>
              <dt class="mono">{k}</dt>
              <dd class="mono">{v}</dd>
            </>
          ))}
        </dl>
      )}
    </section>
  );
}

function DeleteButton({ name }: { name: string }) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [error, setError] = useState<string>();
  const remove = async () => {
    try {
      await api('DELETE', fnPath(name));
      dialog.current?.close();
      go();
    } catch (err) {
      setError((err as Error).message);
    }
  };
  return (
    <>
      <button type="button" class="danger" onClick={() => dialog.current?.showModal()}>
        Delete
      </button>
      <dialog ref={dialog} aria-labelledby="delete-title">
        <h2 id="delete-title">Delete {name}?</h2>
        <p>This stops its instances and removes its code. It cannot be undone.</p>
        <p class="error" role="alert">
          {error}
        </p>
        <form method="dialog" class="actions">
          <button type="submit" class="secondary" autofocus>
            Cancel
          </button>
          <button type="button" class="danger" onClick={remove}>
            Delete {name}
          </button>
        </form>
      </dialog>
    </>
  );
}

export function FunctionPage({ name }: { name: string }) {
  const fn = usePoll(() => api<FunctionView>('GET', fnPath(name)), POLL_MS, [name]);
  const instances = usePoll(() => api<InstanceInfo[]>('GET', `${fnPath(name)}/instances`), POLL_MS, [name]);
  const f = fn.data;
  if (!f) {
    return (
      <>
        <h1 tabIndex={-1}>{name}</h1>
        <p role={fn.error ? 'alert' : 'status'}>{fn.error ? fn.error.message : 'Loading…'}</p>
        <p>
          <a href="#/">All functions</a>
        </p>
      </>
    );
  }
  const url = `${location.origin}/functions/${encodeURIComponent(f.name)}/`;
  return (
    <>
      <div class="title">
        <h1 tabIndex={-1}>{f.name}</h1>
        <span aria-live="polite">
          <StatusBadge fn={f} instances={instances.data} />
        </span>
        <span class="hint">
          {readyCount(instances.data) ?? '…'} ready ·{' '}
          {/* A function's page shares this origin: in a new tab without an opener it gets no copy of the token. */}
          <a href={url} target="_blank" rel="noopener noreferrer">
            {url}
          </a>
        </span>
        <DeleteButton name={f.name} />
      </div>
      {f.status === 'failing' && (
        <p class="error" role="alert">
          Failing since {f.failing_since && dateTime(f.failing_since)}: {f.last_error}
        </p>
      )}
      <div class="panels">
        <Traffic name={f.name} />
        <Deploy
          fn={f}
          onDeployed={() => {
            fn.reload();
            instances.reload();
          }}
        />
        <Invoke name={f.name} onInvoked={instances.reload} />
        <Logs name={f.name} />
        <Invocations name={f.name} />
        <Instances instances={instances.data} />
        <Configuration fn={f} />
      </div>
    </>
  );
}
