/** The dashboard: a login form, then the functions, one function's page, and the workers (hash routes). */
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, api, token, whenUnauthorized } from './api.js';
import { useHashRoute } from './hooks.js';
import { FunctionPage } from './pages/function.js';
import { FunctionsPage } from './pages/functions.js';
import { WorkersPage } from './pages/workers.js';

function Login({ notice, onLogin }: { notice?: string; onLogin: () => void }) {
  const [error, setError] = useState(notice);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    const value = (new FormData(e.currentTarget as HTMLFormElement).get('token') as string).trim();
    setBusy(true);
    try {
      await api('GET', '/api/system', undefined, value);
      token.set(value);
      onLogin();
    } catch (err) {
      setError(err instanceof ApiError && err.status === 401 ? 'That token was not accepted.' : (err as Error).message);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="login">
      <h1>Aether</h1>
      <form onSubmit={submit}>
        <label for="token">API token</label>
        <input id="token" name="token" type="password" autocomplete="current-password" required autofocus />
        <p class="hint">
          Printed when Aether first started, and kept in <code>.aether/api-token</code>. It stays in this tab only.
        </p>
        <button type="submit" disabled={busy}>
          Log in
        </button>
        <p class="error" role="alert">
          {error}
        </p>
      </form>
    </main>
  );
}

function Shell({ onLogout }: { onLogout: () => void }) {
  const route = useHashRoute();
  const main = useRef<HTMLElement>(null);
  const key = route.join('/');
  // A new page: move focus to its heading, so that keyboard and screen-reader users start there.
  useEffect(() => main.current?.querySelector<HTMLElement>('h1')?.focus(), [key]);
  const [section, name] = route;
  const page = section === 'functions' && name ? <FunctionPage name={name} /> : section === 'workers' ? <WorkersPage /> : <FunctionsPage />;
  const current = (s: string) => ((section ?? 'functions') === s ? 'page' : undefined);
  return (
    <>
      <header class="top">
        <a class="brand" href="#/">
          Aether
        </a>
        <nav aria-label="Main">
          <a href="#/" aria-current={current('functions')}>
            Functions
          </a>
          <a href="#/workers" aria-current={current('workers')}>
            Workers
          </a>
        </nav>
        <button type="button" class="secondary" onClick={onLogout}>
          Log out
        </button>
      </header>
      <main ref={main} key={key}>
        {page}
      </main>
    </>
  );
}

function App() {
  const [loggedIn, setLoggedIn] = useState(token.get() !== null);
  const [notice, setNotice] = useState<string>();
  useEffect(() => {
    whenUnauthorized((message) => {
      token.clear();
      setNotice(`Logged out: ${message}`);
      setLoggedIn(false);
    });
  }, []);
  if (!loggedIn) return <Login notice={notice} onLogin={() => setLoggedIn(true)} />;
  return (
    <Shell
      onLogout={() => {
        token.clear();
        setNotice(undefined);
        setLoggedIn(false);
      }}
    />
  );
}

render(<App />, document.getElementById('app')!);
