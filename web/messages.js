// The pages' message list (the #messages element of the demo page and
// the console): show adds a message the user can dismiss, hide removes
// the one of a key.

const list = () => document.getElementById('messages');

// show adds text at level (info, warning, error) to the list; key, when
// given, replaces an earlier message with the same key.
export function show(level, text, key = '') {
  if (key) hide(key);
  const li = document.createElement('li');
  li.className = level;
  li.dataset.key = key;
  const span = document.createElement('span');
  span.textContent = text;
  const close = document.createElement('button');
  close.type = 'button';
  close.textContent = '×';
  close.title = 'dismiss';
  close.onclick = () => li.remove();
  li.append(span, close);
  list().append(li);
}

// hide removes the message of key.
export function hide(key) {
  for (const li of list().querySelectorAll('li')) if (li.dataset.key === key) li.remove();
}
