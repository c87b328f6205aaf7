// gpoa serve: the page. It holds no method code and checks no input: the server does both
// (gpoa/serve/workbench.py) and this page shows what it answers, its messages included.
'use strict';

const state = {
  options: null,
  references: [],       // {id, name, width, height, card, paint, mask: {source: 'painted'|'file', uploadId, dirty}}
  referenceKey: null,   // the uploads the last encoded reference was made of, and its id
  referenceId: null,
  targets: [],          // File objects
  truths: new Map(),    // file stem -> File
  results: [],          // result ids of the last run, in target order (null where a target failed)
};

const $ = (selector, root = document) => root.querySelector(selector);

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === 'class') node.className = value;
    else if (key.startsWith('data-')) node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

function showMessage(box, text) {
  box.textContent = text;
  box.hidden = !text;
}

// ----- talking to the server --------------------------------------------------------------------------
async function api(method, url, body = undefined, headers = {}) {
  let response;
  try {
    response = await fetch(url, {method, body, headers});
  } catch (error) {
    throw new Error('cannot reach the server: is gpoa serve still running? (start it again and reload this page)');
  }
  let data = null;
  try { data = await response.json(); } catch (error) { data = null; }
  if (!response.ok) {
    throw new Error(data && data.error ? data.error : `the server answered ${response.status} ${response.statusText}`);
  }
  return data;
}

function postJSON(url, value) {
  return api('POST', url, JSON.stringify(value), {'Content-Type': 'application/json'});
}

function uploadFile(blob, name) {
  return api('POST', '/api/uploads', blob,
             {'Content-Type': 'application/octet-stream', 'X-File-Name': encodeURIComponent(name)});
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error(`cannot show ${url}`));
    image.src = url;
  });
}

// ----- settings ----------------------------------------------------------------------------------------
function updateSettings() {
  const options = state.options;
  const policy = $('#use-policy');
  const presence = $('#use-presence');
  policy.disabled = !options.policy_available;
  if (!options.policy_available) policy.checked = false;
  const canPresence = policy.checked ? options.presence_available.with_policy
                                     : options.presence_available.without_policy;
  presence.disabled = !canPresence;
  if (!canPresence) presence.checked = false;
  const notes = [];
  if (!options.policy_available) notes.push('no policy loaded (gpoa serve --policy FILE)');
  if (!canPresence) notes.push('presence needs a threshold (a policy\'s, or optimize.presence_threshold)');
  $('#settings-note').textContent = notes.join(' · ');
}

// ----- references: an image and its mask, uploaded or painted ------------------------------------------
async function addReferences(files) {
  const box = $('#reference-message');
  showMessage(box, '');
  const problems = [];
  for (const file of files) {
    try {
      const upload = await uploadFile(file, file.name);
      await addReferenceCard(upload);
    } catch (error) {
      problems.push(error.message);
    }
  }
  showMessage(box, problems.join('\n'));
}

async function addReferenceCard(upload) {
  const picture = element('canvas', {class: 'picture', width: upload.width, height: upload.height});
  const paint = element('canvas', {class: 'paint', width: upload.width, height: upload.height});
  const preview = await loadImage(`/api/uploads/${upload.id}/preview.png`);
  picture.getContext('2d').drawImage(preview, 0, 0, upload.width, upload.height);
  const reference = {id: upload.id, name: upload.name, width: upload.width, height: upload.height, paint,
                     mask: {source: 'painted', uploadId: null, dirty: true}, tool: 'brush'};
  const maskInput = element('input', {type: 'file', accept: 'image/*', class: 'mask-input'});
  const brush = element('button', {type: 'button', class: 'brush active', textContent: 'Brush'});
  const eraser = element('button', {type: 'button', class: 'eraser', textContent: 'Eraser'});
  const size = element('input', {type: 'range', min: 1, max: 80, value: 12, class: 'brush-size',
                                 title: 'brush size (radius in screen pixels)'});
  const clear = element('button', {type: 'button', class: 'clear', textContent: 'Clear'});
  const remove = element('button', {type: 'button', class: 'remove', textContent: '✕', title: 'remove this reference'});
  const maskState = element('span', {class: 'mask-state', textContent: 'mask: paint it, or upload one'});
  const card = element('div', {class: 'reference', 'data-upload': upload.id},
    element('div', {class: 'title'}, element('span', {textContent: `${upload.name} (${upload.width} × ${upload.height})`}), remove),
    element('div', {class: 'stage'}, picture, paint),
    element('div', {class: 'tools'},
      element('label', {class: 'button secondary', textContent: 'Upload mask'}, maskInput),
      element('span', {textContent: 'or paint:'}), brush, eraser,
      element('label', {textContent: 'size '}, size), clear),
    maskState);
  reference.card = card;
  reference.maskState = maskState;
  state.references.push(reference);
  $('#reference-list').append(card);

  const pick = (tool) => {
    reference.tool = tool;
    brush.classList.toggle('active', tool === 'brush');
    eraser.classList.toggle('active', tool === 'eraser');
  };
  brush.addEventListener('click', () => pick('brush'));
  eraser.addEventListener('click', () => pick('eraser'));
  clear.addEventListener('click', () => {
    paint.getContext('2d').clearRect(0, 0, paint.width, paint.height);
    setPainted(reference);
  });
  remove.addEventListener('click', () => {
    state.references = state.references.filter((r) => r !== reference);
    card.remove();
  });
  maskInput.addEventListener('change', async () => {
    const file = maskInput.files[0];
    maskInput.value = '';
    if (file) await uploadMask(reference, file);
  });
  enablePainting(reference, size);
}

function setPainted(reference) {
  reference.mask = {source: 'painted', uploadId: null, dirty: true};
  reference.maskState.textContent = 'mask: painted';
}

function enablePainting(reference, size) {
  const paint = reference.paint;
  const context = paint.getContext('2d');
  let last = null;
  const position = (event) => {
    const box = paint.getBoundingClientRect();
    return {x: (event.clientX - box.left) * paint.width / box.width,
            y: (event.clientY - box.top) * paint.height / box.height,
            scale: paint.width / box.width};
  };
  const stroke = (from, to) => {
    context.globalCompositeOperation = reference.tool === 'eraser' ? 'destination-out' : 'source-over';
    context.strokeStyle = context.fillStyle = '#1e90ff';
    context.lineCap = context.lineJoin = 'round';
    const radius = Number(size.value) * to.scale;
    context.lineWidth = 2 * radius;
    context.beginPath();
    if (from) {
      context.moveTo(from.x, from.y);
      context.lineTo(to.x, to.y);
      context.stroke();
    } else {
      context.arc(to.x, to.y, radius, 0, 2 * Math.PI);
      context.fill();
    }
  };
  paint.addEventListener('pointerdown', (event) => {
    event.preventDefault();
    paint.setPointerCapture(event.pointerId);
    last = position(event);
    stroke(null, last);
    setPainted(reference);
  });
  paint.addEventListener('pointermove', (event) => {
    if (!last) return;
    const here = position(event);
    stroke(last, here);
    last = here;
  });
  const stop = () => { last = null; };
  paint.addEventListener('pointerup', stop);
  paint.addEventListener('pointercancel', stop);
}

async function uploadMask(reference, file) {
  const box = $('#reference-message');
  showMessage(box, '');
  try {
    const upload = await uploadFile(file, file.name);
    // show it on the image (its nonzero pixels), ready to be corrected with the brush
    const preview = await loadImage(`/api/uploads/${upload.id}/preview.png`);
    const scratch = element('canvas', {width: reference.width, height: reference.height});
    const scratchContext = scratch.getContext('2d');
    scratchContext.drawImage(preview, 0, 0, reference.width, reference.height);
    const pixels = scratchContext.getImageData(0, 0, reference.width, reference.height);
    for (let i = 0; i < pixels.data.length; i += 4) {
      const on = pixels.data[i] || pixels.data[i + 1] || pixels.data[i + 2];
      pixels.data.set(on ? [30, 144, 255, 255] : [0, 0, 0, 0], i);
    }
    reference.paint.getContext('2d').putImageData(pixels, 0, 0);
    reference.mask = {source: 'file', uploadId: upload.id, dirty: false};
    reference.maskState.textContent = `mask: ${upload.name}`;
  } catch (error) {
    showMessage(box, error.message);
  }
}

function paintedMask(reference) {
  // the painted layer as a black-and-white PNG: white where the brush left paint
  const {width, height} = reference.paint;
  const painted = reference.paint.getContext('2d').getImageData(0, 0, width, height).data;
  const out = element('canvas', {width, height});
  const context = out.getContext('2d');
  const pixels = context.createImageData(width, height);
  for (let i = 0; i < painted.length; i += 4) {
    const value = painted[i + 3] >= 128 ? 255 : 0;
    pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = value;
    pixels.data[i + 3] = 255;
  }
  context.putImageData(pixels, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, 'image/png'));
}

async function encodeReference() {
  const images = [];
  const masks = [];
  for (const reference of state.references) {
    images.push(reference.id);
    if (reference.mask.source === 'painted' && reference.mask.dirty) {
      const upload = await uploadFile(await paintedMask(reference), `the painted mask of ${reference.name}`);
      reference.mask = {source: 'painted', uploadId: upload.id, dirty: false};
    }
    reference.card.dataset.mask = reference.mask.uploadId;
    masks.push(reference.mask.uploadId);
  }
  const key = JSON.stringify([images, masks]);
  if (key !== state.referenceKey) {
    const answer = await postJSON('/api/references', {images, masks});
    state.referenceKey = key;
    state.referenceId = answer.reference;
  }
  return state.referenceId;
}

// ----- targets -----------------------------------------------------------------------------------------
const stem = (name) => name.replace(/\.[^.]*$/, '');

function chooseTargets(files) {
  state.targets = Array.from(files);
  $('#target-count').textContent = state.targets.length ? `${state.targets.length} chosen` : 'none chosen';
  $('#run').disabled = !state.targets.length;
  countTruths();
}

function chooseTruths(files) {
  state.truths = new Map(Array.from(files, (file) => [stem(file.name), file]));
  countTruths();
}

function countTruths() {
  if (!state.truths.size) return;
  const matched = state.targets.filter((file) => state.truths.has(stem(file.name))).length;
  $('#truth-count').textContent = `${state.truths.size} chosen, ${matched} matched to a target by file name`;
}

function resultCard(file) {
  return element('div', {class: 'result waiting', 'data-state': 'waiting'},
                 element('div', {class: 'title', textContent: file.name}),
                 element('div', {class: 'picture'}),
                 element('div', {class: 'status', textContent: 'waiting'}));
}

function points(group, prompts, radius) {
  const svg = 'http://www.w3.org/2000/svg';
  const layer = document.createElementNS(svg, 'g');
  layer.setAttribute('class', group);
  prompts.points.forEach(([x, y], i) => {
    const dot = document.createElementNS(svg, 'circle');
    dot.setAttribute('cx', x);
    dot.setAttribute('cy', y);
    dot.setAttribute('r', radius);
    dot.setAttribute('stroke-width', radius / 3);
    dot.setAttribute('class', prompts.labels[i] ? 'object' : 'background');
    layer.append(dot);
  });
  return layer;
}

function showResult(card, result) {
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', `0 0 ${result.width} ${result.height}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  const radius = Math.max(4, Math.round(Math.max(result.width, result.height) / 90));
  svg.append(points('initial', result.prompts.initial, radius), points('optimized', result.prompts.optimized, radius));
  $('.picture', card).replaceChildren(element('img', {src: result.overlay, alt: `mask of ${result.name}`}), svg);
  const count = (prompts) => {
    const positives = prompts.labels.filter((label) => label).length;
    return `${positives} + ${prompts.labels.length - positives}`;
  };
  const numbers = [['present', result.present ? 'yes' : 'no'], ['confidence', result.confidence.toFixed(2)]];
  if (result.dice !== null) numbers.push(['Dice', result.dice.toFixed(3)], ['IoU', result.iou.toFixed(3)]);
  const line = element('div', {class: 'numbers'});
  numbers.forEach(([name, value], i) => line.append(i ? ' · ' : '', `${name} `, element('b', {className: name.toLowerCase(), textContent: value})));
  const prompts = element('div', {class: 'numbers', textContent:
    `prompts (object + background): initial ${count(result.prompts.initial)} → ` +
    `${result.policy ? 'optimised' : 'no policy:'} ${count(result.prompts.optimized)}`});
  $('.status', card).replaceWith(line, prompts);
  card.className = 'result';
  card.dataset.state = 'done';
  card.dataset.result = result.id;
}

function showFailure(card, message) {
  card.className = 'result failed';
  card.dataset.state = 'failed';
  $('.status', card).replaceWith(element('div', {class: 'message', textContent: message}));
}

async function segmentOne(file, card, reference, settings) {
  $('.status', card).textContent = 'uploading';
  const target = await uploadFile(file, file.name);
  const truthFile = state.truths.get(stem(file.name));
  const truth = truthFile ? await uploadFile(truthFile, truthFile.name) : null;
  $('.status', card).textContent = 'queued';
  return postJSON('/api/predictions', {reference, target: target.id, truth: truth ? truth.id : null, ...settings});
}

async function run() {
  const button = $('#run');
  button.disabled = true;
  document.body.dataset.state = 'running';
  showMessage($('#run-message'), '');
  showMessage($('#reference-message'), '');
  showMessage($('#download-message'), '');
  $('#download').disabled = true;
  const list = $('#result-list');
  list.replaceChildren();
  state.results = [];
  const progress = $('#progress');
  const text = $('#progress-text');
  try {
    let reference;
    try {
      text.textContent = 'reading the reference';
      reference = await encodeReference();
    } catch (error) {
      showMessage($('#reference-message'), error.message);
      text.textContent = 'the reference could not be used';
      return;
    }
    const settings = {policy: $('#use-policy').checked, presence: $('#use-presence').checked};
    const files = state.targets.slice();
    const cards = files.map(resultCard);
    list.append(...cards);
    let done = 0;
    let failed = 0;
    progress.max = files.length;
    progress.value = 0;
    const report = () => {
      text.textContent = `${done} of ${files.length} done` + (failed ? `, ${failed} failed` : '');
    };
    report();
    // two targets in flight: one uploads while the other is segmented (the server queues the rest)
    let next = 0;
    const worker = async () => {
      while (next < files.length) {
        const index = next++;
        try {
          const result = await segmentOne(files[index], cards[index], reference, settings);
          showResult(cards[index], result);
          state.results[index] = result.id;
        } catch (error) {
          showFailure(cards[index], error.message);
          failed++;
        }
        done++;
        progress.value = done;
        report();
        $('#download').disabled = !state.results.some(Boolean);
      }
    };
    await Promise.all([worker(), worker()]);
  } finally {
    button.disabled = !state.targets.length;
    document.body.dataset.state = 'done';
  }
}

async function download() {
  const box = $('#download-message');
  showMessage(box, '');
  try {
    const answer = await postJSON('/api/archives', {results: state.results.filter(Boolean)});
    const link = element('a', {href: answer.url, download: 'gpoa-results.zip'});
    document.body.append(link);
    link.click();
    link.remove();
  } catch (error) {
    showMessage(box, error.message);
  }
}

async function start() {
  try {
    state.options = await api('GET', '/api/options');
  } catch (error) {
    showMessage($('#run-message'), error.message);
    return;
  }
  $('#use-policy').checked = state.options.policy;
  $('#use-presence').checked = state.options.presence;
  updateSettings();
  $('#use-policy').addEventListener('change', updateSettings);
  $('#reference-input').addEventListener('change', async (event) => {
    const files = Array.from(event.target.files);
    event.target.value = '';
    await addReferences(files);
  });
  // the files chosen are kept here; the input is emptied, so that choosing again replaces them
  $('#target-input').addEventListener('change', (event) => {
    chooseTargets(event.target.files);
    event.target.value = '';
  });
  $('#truth-input').addEventListener('change', (event) => {
    chooseTruths(event.target.files);
    event.target.value = '';
  });
  $('#run').addEventListener('click', run);
  $('#run').disabled = true;
  $('#download').addEventListener('click', download);
  document.querySelectorAll('input[name=prompt-view]').forEach((radio) => radio.addEventListener('change', () => {
    $('#result-list').className = `show-${radio.value}`;
  }));
  document.body.dataset.state = 'ready';
}

start();
