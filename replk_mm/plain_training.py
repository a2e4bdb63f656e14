"""What the examples without OpenMMLab share (segmentation/smp_upernet.py, detection/torchvision_mask_rcnn.py):
their common command-line options and their plain AdamW training loop. Needs torch only."""
import ast

import torch


def add_training_arguments(parser, iters, warmup_iters):
    """The options both examples take: the timm model, its ImageNet checkpoint, the optimisation and the output."""
    parser.add_argument('--model', default='unireplknet_s', help='a timm name of unireplknet.py (unireplknet_n ...)')
    parser.add_argument('--model_kwargs', type=ast.literal_eval, default={},
                        help="extra model arguments as a Python dict, e.g. \"{'drop_path_rate': 0.3}\"")
    parser.add_argument('--checkpoint', help='ImageNet checkpoint of --model (optional)')
    parser.add_argument('--iters', type=int, default=iters)
    parser.add_argument('--warmup_iters', type=int, default=warmup_iters, help='linear warm-up iterations')
    parser.add_argument('--batch_size', type=int, default=16)
    parser.add_argument('--lr', type=float, default=1e-4)
    parser.add_argument('--weight_decay', type=float, default=0.05)
    parser.add_argument('--workers', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--output', help='where to save the trained model state_dict')


def train_iterations(model, loader, loss_of_batch, args, lr_after_warmup=lambda iteration: 1.0):
    """args.iters AdamW updates over `loader` (re-iterated as needed), the learning rate warmed up linearly over
    args.warmup_iters then scaled by lr_after_warmup(iteration); returns every iteration's loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: (
        (i + 1) / args.warmup_iters if i < args.warmup_iters else lr_after_warmup(i)))
    losses = []
    model.train()
    while len(losses) < args.iters:
        for batch in loader:
            loss = loss_of_batch(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            if len(losses) == args.iters:
                break
    print(f'{args.iters} iterations, loss {losses[0]:.4f} -> {losses[-1]:.4f}')
    return losses
